"""Loader behaviour that matters with many forked workers: manifest strings kept in numpy buffers (no per-entry
Python objects whose reference counts the workers would write), garbage-collector state frozen for the fork, and a
process that exits (normally or of an uncaught error) while a loader's persistent workers are alive."""
import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from common.data.bench import write_corpus
from common.data.dataset import AudioDataset
from common.data.loader import LoaderConfig, build_loader
from common.data.manifest import Labels, Manifest, StringTable, load_labels, load_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_manifest_and_labels_keep_their_strings_in_numpy_buffers(tmp_path):
    (tmp_path / "x.tsv").write_text(f"{tmp_path}\na.flac\t10\nskip.flac\t1\nsub/é b.flac\t20\n", encoding="utf-8")
    (tmp_path / "x.ltr").write_text("A |\nS |\nÉ B |\n", encoding="utf-8")
    m = load_manifest(tmp_path / "x.tsv", min_sample_size=5)
    lab = load_labels(tmp_path / "x.ltr", m)
    for table, expected in ((m.files, ["a.flac", "sub/é b.flac"]), (lab.lines, ["A |", "É B |"])):
        assert isinstance(table, StringTable)
        assert all(isinstance(getattr(table, slot), np.ndarray) for slot in StringTable.__slots__)
        assert table == expected and list(table) == expected and len(table) == 2
        assert table[1] == expected[1] and table[-1] == expected[-1] and table[np.int64(0)] == expected[0]
        assert table[::-1] == expected[::-1]
        assert pickle.loads(pickle.dumps(table)) == table  # a spawned worker gets the same strings
        with pytest.raises(IndexError):
            table[2]
    assert m.audio_path(1) == os.path.join(str(tmp_path), "sub/é b.flac")


def test_lists_given_to_manifest_and_labels_are_converted():
    m = Manifest(path="x.tsv", root="/r", files=["a", "b\udcff"], sizes=np.array([1, 2]), line_numbers=np.array([2, 3]))
    lab = Labels(path="x.ltr", lines=("A |", "B |"), line_numbers=np.array([1, 2]))
    assert isinstance(m.files, StringTable) and m.files == ["a", "b\udcff"]  # undecodable names survive
    assert isinstance(lab.lines, StringTable) and lab.lines == ["A |", "B |"]
    assert StringTable([]) == [] and len(StringTable()) == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return write_corpus(str(d), [800 + 50 * i for i in range(12)], split="train")


def test_workers_are_forked_with_the_collectors_objects_frozen(corpus):
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("only forked workers share the parent's pages")
    loader = build_loader(AudioDataset(load_manifest(corpus)),
                          LoaderConfig(max_tokens=4000, num_workers=1, persistent_workers=False))

    def collate(samples, rng, sub_batch_sizes):  # runs in the worker
        return {"frozen": gc.get_freeze_count()}

    loader._loader.dataset.collater = collate
    frozen = [batch["frozen"] for batch in loader]
    assert frozen and min(frozen) > 0  # the worker's collections skip the objects that existed at the fork
    assert gc.get_freeze_count() == 0  # ... and the parent collects as before
    gc.freeze()  # a program that froze objects itself keeps its freeze
    try:
        assert [batch["frozen"] for batch in loader] and gc.get_freeze_count() > 0  # (not unfrozen: 0)
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("ending,persistent", [("return", True), ("raise", True), ("raise", False)])
def test_process_exits_while_a_loader_has_workers(corpus, ending, persistent):
    script = textwrap.dedent(f"""
        from common.data.dataset import AudioDataset
        from common.data.loader import LoaderConfig, build_loader
        from common.data.manifest import load_manifest

        def train():
            loader = build_loader(AudioDataset(load_manifest({corpus!r})),
                                  LoaderConfig(max_tokens=4000, num_workers=1, persistent_workers={persistent!r}))
            for batch in loader:
                if {ending!r} == "raise":
                    raise RuntimeError("simulated failure in a training step")
            return loader

        kept = train()  # alive at exit (or held by the traceback of the uncaught error)
    """)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    try:  # the workers ignore SIGTERM: without the exit hook the interpreter waits for them forever
        proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:  # (the killed process's workers exit when they see their parent gone)
        pytest.fail("the process did not exit: it waits for loader workers that ignore SIGTERM")
    if ending == "raise":
        assert proc.returncode == 1 and "simulated failure" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


def test_dropping_a_part_consumed_epoch_ends_non_persistent_workers(corpus):
    """The loader kept the torch iterator of the current epoch (for the exit hook) after its generator was dropped
    part-way (the trainer's ``del it`` at an epoch end with batches left over, or at max_update): workers without
    ``persistent_workers`` then stayed alive, holding their prefetched batches, through validation."""
    loader = build_loader(AudioDataset(load_manifest(corpus)),
                          LoaderConfig(max_tokens=2000, num_workers=1, persistent_workers=False))
    assert len(loader) > 2
    it = iter(loader)
    next(it)
    assert len(multiprocessing.active_children()) == 1
    del it
    gc.collect()
    assert loader._batches is None and loader._loader._iterator is None
    for _ in range(100):  # (the worker exits shortly after it is told to)
        if not multiprocessing.active_children():
            break
        time.sleep(0.05)
    assert multiprocessing.active_children() == []
