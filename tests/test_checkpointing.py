"""common.checkpointing: the reference's retention rule (REFERENCE.md 2.3, quirk Q7 reproduced), atomic saves, and
resume from the newest checkpoint that loads."""

from __future__ import annotations

import os

import pytest
import torch

from common.checkpointing import Checkpointer, UnreadableCheckpointsError
from wav2vec2.checkpoint import read_checkpoint


def _steps(directory) -> list[int]:
    return sorted(int(f[len("wav2vec2_update"):-3]) for f in os.listdir(directory)
                  if f.startswith("wav2vec2_update") and f.endswith(".pt"))


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    """A write that fails half-way (here: torch.save writes part of the file, then the disk is full) leaves the
    checkpoint already at that path intact and no partial file behind."""
    import common.checkpointing as checkpointing

    ck = Checkpointer(str(tmp_path), log=lambda *_: None)
    path = ck.save({"step": 7, "weights": torch.arange(1000.0)}, 7, best=True)
    before = sorted(os.listdir(tmp_path))
    real_save = torch.save

    def full_disk(obj, f):
        real_save({"step": 8}, f)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpointing.atomic_torch_save({"step": 8}, path)
    with pytest.raises(OSError, match="No space left"):
        ck.save({"step": 9}, 9, best=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before == ["wav2vec2_best.pt", "wav2vec2_update7.pt"]
    for name in before:
        state = read_checkpoint(str(tmp_path / name))
        assert state["step"] == 7 and torch.equal(state["weights"], torch.arange(1000.0))


def test_checkpoints_of_other_runs_below_output_dir_are_left_alone(tmp_path):
    """A pretraining run kept in a subdirectory of a fine-tuning run's output_dir: the fine-tuning run neither resumes
    from its checkpoints nor deletes them (the reference's recursive scan did both), and says so once."""
    nested = tmp_path / "pretrain_base"
    nested.mkdir()
    for step in (100, 400000):
        torch.save({"step": step}, str(nested / f"wav2vec2_update{step}.pt"))
    notes = []
    ck = Checkpointer(str(tmp_path), keep_milestones=(), log=notes.append)
    assert ck.load_latest(read_checkpoint) is None  # nothing of this run's own yet: a fresh start
    assert sum("pretrain_base" in n for n in notes) == 1  # the resume names what it left alone
    for step in (1, 2, 3, 4):
        ck.save({"step": step}, step)
    assert _steps(tmp_path) == [3, 4] and _steps(nested) == [100, 400000]
    assert ck.load_latest(read_checkpoint)[1]["step"] == 4


def test_an_output_dir_name_with_glob_characters_resumes(tmp_path):
    """``exp[lr=1e-4]`` is a directory name, not a pattern: its checkpoints are found, resumed and retained."""
    out = tmp_path / "exp[lr=1e-4]"
    ck = Checkpointer(str(out), keep_milestones=(), log=lambda *_: None)
    for step in (1, 2, 3):
        ck.save({"step": step}, step)
    again = Checkpointer(str(out), keep_milestones=(), log=lambda *_: None)
    assert [s for s, _ in again.tracked] == [2, 3]
    assert again.load_latest(read_checkpoint)[1]["step"] == 3
    again.save({"step": 4}, 4)
    assert _steps(out) == [3, 4]


def test_retention_follows_the_reference_rule(tmp_path):
    """Worked by hand from REFERENCE.md 2.3 (milestones 100 and 200; before registering a save, the tracked file
    closest to each milestone is kept, ties to the smaller update; then all but those and the newest two go):
    50 -> {50}; 100 -> {50, 100}; 150 -> keep {100}: {100, 150}; 200 -> keep {100, 150}: {100, 150, 200};
    250 -> keep {100, 200}: {100, 200, 250}; 300 -> keep {100, 200}: {100, 200, 250, 300}."""
    ck = Checkpointer(str(tmp_path), keep_milestones=(100, 200), log=lambda *_: None)
    after = {}
    for step in (50, 100, 150, 200, 250, 300):
        ck.save({"step": step}, step)
        after[step] = _steps(tmp_path)
    assert after == {50: [50], 100: [50, 100], 150: [100, 150], 200: [100, 150, 200], 250: [100, 200, 250],
                     300: [100, 200, 250, 300]}


def test_quirk_q7_default_milestones_keep_the_earliest_plus_the_last_two(tmp_path):
    """Q7 reproduced: the default milestones 100..400 are compared with UPDATE numbers, so with saves every 1,000
    updates the first checkpoint is closest to all of them and is kept for ever, beside the newest two; the best file
    is never deleted."""
    ck = Checkpointer(str(tmp_path), log=lambda *_: None)
    for step in range(1000, 6000, 1000):
        ck.save({"step": step}, step, best=step == 2000)
    assert _steps(tmp_path) == [1000, 4000, 5000]
    assert torch.load(tmp_path / "wav2vec2_best.pt", weights_only=True) == {"step": 2000}


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path):
    logs = []
    ck = Checkpointer(str(tmp_path), log=logs.append)
    ck.save({"step": 10}, 10)
    ck.save({"step": 20}, 20)
    path20 = tmp_path / "wav2vec2_update20.pt"
    path20.write_bytes(path20.read_bytes()[:40])  # a copy cut short by a full disk or a killed transfer
    (tmp_path / "wav2vec2_update30.pt.tmp").write_bytes(b"an interrupted save")  # never a candidate
    path, state = Checkpointer(str(tmp_path), log=logs.append).load_latest(read_checkpoint)
    assert path.endswith("wav2vec2_update10.pt") and state["step"] == 10
    assert any("wav2vec2_update20.pt" in m and "truncated or corrupt" in m for m in logs)


def test_no_checkpoint_gives_none_but_only_unreadable_ones_are_an_error(tmp_path):
    """Nothing to resume: None (a fresh start). Checkpoints that all fail to load: an error naming them (a fresh
    start would overwrite them), pointing at the best checkpoint when there is one."""
    assert Checkpointer(str(tmp_path), log=lambda *_: None).load_latest(read_checkpoint) is None
    (tmp_path / "wav2vec2_update5.pt").write_bytes(b"")
    (tmp_path / "wav2vec2_best.pt").write_bytes(b"")
    with pytest.raises(UnreadableCheckpointsError, match="wav2vec2_update5.pt") as info:
        Checkpointer(str(tmp_path), log=lambda *_: None).load_latest(read_checkpoint)
    assert "--ckpt" in str(info.value) and "wav2vec2_best.pt" in str(info.value)


def test_a_full_disk_is_one_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    """torch's zip writer turns a failed write into "[enforce fail at inline_container.cc] unexpected pos", with
    "No space left on device" only in the exception chain. The save becomes one OSError naming the checkpoint
    and the cause (train.py prints it as one line), and the earlier checkpoint is untouched. /dev/full is a real
    full disk: every write fails with ENOSPC."""
    import builtins
    import errno

    import common.checkpointing as checkpointing

    path = str(tmp_path / "wav2vec2_update2.pt")
    checkpointing.atomic_torch_save({"model": {"w": torch.ones(3)}}, path)
    real_open = builtins.open
    monkeypatch.setattr(checkpointing, "open", lambda name, mode="r", *a, **k: real_open("/dev/full", mode),
                        raising=False)
    with pytest.raises(OSError) as err:
        checkpointing.atomic_torch_save({"model": {"w": torch.zeros(10000)}}, path)
    assert err.value.errno == errno.ENOSPC and err.value.filename == path
    assert "could not write checkpoint: No space left on device" in str(err.value)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["wav2vec2_update2.pt"]


def test_a_save_failing_for_another_reason_keeps_its_own_error(tmp_path):
    """Only write failures become 'could not write checkpoint': an object torch cannot save (or a CUDA fault) keeps
    its own exception and traceback, and no temporary file is left."""
    import common.checkpointing as checkpointing

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this object")

    with pytest.raises(RuntimeError, match="cannot pickle this object"):
        checkpointing.atomic_torch_save({"model": {}, "x": Unsaveable()}, str(tmp_path / "c.pt"))
    assert os.listdir(tmp_path) == []


def test_resume_removes_the_temporary_file_of_a_killed_save(tmp_path):
    """A save killed mid-write (SIGKILL) leaves <checkpoint>.tmp<pid>, as large as a checkpoint: the next resume
    removes it when that process is gone, and leaves a live process's alone."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    logs = []
    ck = Checkpointer(str(tmp_path), log=logs.append)
    ck.save({"step": 3}, 3)
    stale = tmp_path / f"wav2vec2_update6.pt.tmp{dead_pid}"
    live = tmp_path / f"wav2vec2_update9.pt.tmp{os.getpid()}"
    other = tmp_path / f"notes.pt.tmp{dead_pid}"
    for f in (stale, live, other):
        f.write_bytes(b"half a checkpoint")
    path, _ = ck.load_latest(read_checkpoint)
    assert path.endswith("wav2vec2_update3.pt")
    assert not stale.exists() and live.exists() and other.exists()
    assert any(str(stale) in m for m in logs)
