"""The loader end to end on tiny FLAC corpora: coverage per rank, resume position with identical crops, summary."""
import pytest
import torch

from common.data.bench import write_corpus
from common.data.dataset import AudioDataset, open_split
from common.data.errors import DataError
from common.data.loader import LoaderConfig, build_loader
from common.data.manifest import load_manifest

LENGTHS = [800 + 97 * i for i in range(40)]  # 800 .. 4583 samples


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_corpus(str(d), LENGTHS, split="train", transcripts=[("A B | " * (1 + i % 3)).strip() for i in range(40)])
    (d / "dict.ltr.txt").write_text("| 9\nA 8\nB 7\n")
    return d


def _cfg(**kw):
    base = dict(max_tokens=12000, max_sample_size=3000, pad=False, seed=5, num_workers=0)
    base.update(kw)
    return LoaderConfig(**base)


def _snapshot(batch):
    return batch["id"].tolist(), batch["source"].clone()


def test_every_utterance_once_per_epoch_on_1_2_3_ranks(corpus):
    ds = AudioDataset(load_manifest(corpus / "train.tsv"))
    for world in (1, 2, 3):
        loaders = [build_loader(ds, _cfg(), world, r) for r in range(world)]
        assert len({len(ld) for ld in loaders}) == 1
        for epoch in (1, 2):
            ids = []
            for ld in loaders:
                ld.set_epoch(epoch)
                batches = list(ld)
                assert len(batches) == len(ld)
                for b in batches:
                    assert b["source"].shape[0] * b["source"].shape[1] <= 12000
                    assert b["source"].shape[1] == min(3000, min(LENGTHS[i] for i in b["id"].tolist()))
                    ids += b["id"].tolist()
            assert sorted(ids) == list(range(40))


def _position_after(loader, epoch: int, batches: int) -> dict:
    """The loader's saved position after handing out ``batches`` batches of ``epoch``."""
    loader.set_epoch(epoch)
    it = iter(loader)
    for _ in range(batches):
        next(it)
    return loader.state_dict()


def test_resume_yields_identical_remaining_batches_and_crops(corpus):
    ds = AudioDataset(load_manifest(corpus / "train.tsv"))
    ref = build_loader(ds, _cfg(), 2, 1)
    ref.set_epoch(2)
    full = [_snapshot(b) for b in ref]
    assert len(full) >= 4

    run = build_loader(ds, _cfg(), 2, 1)
    state = _position_after(run, epoch=2, batches=3)
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 3

    resumed = build_loader(ds, _cfg(num_workers=1), 2, 1)  # a worker process must not change the crops
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = [_snapshot(b) for b in resumed]
    assert len(rest) == len(full) - 3
    for (ids_a, src_a), (ids_b, src_b) in zip(full[3:], rest):
        assert ids_a == ids_b
        assert torch.equal(src_a, src_b)
    assert resumed.state_dict()["batch_in_epoch"] == len(resumed)
    resumed.set_epoch(3)  # the next epoch starts from its beginning
    assert len(list(resumed)) == len(resumed)


def test_resume_with_different_layout_is_refused(corpus):
    ds = AudioDataset(load_manifest(corpus / "train.tsv"))
    state = build_loader(ds, _cfg(), 2, 0).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        build_loader(ds, _cfg(), 3, 0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        build_loader(ds, _cfg(seed=6), 2, 0).load_state_dict(state)
    # same count of batches per rank, different composition (max_tokens 12000 -> 14000): refused by the plan hash
    other = build_loader(ds, _cfg(max_tokens=14000), 2, 0)
    assert len(other) == state["batches_per_epoch"]
    with pytest.raises(ValueError, match="plan"):
        other.load_state_dict(state)
    build_loader(ds, _cfg(), 2, 0).load_state_dict(state)  # identical settings: accepted


def test_resume_with_a_changed_plan_when_allowed(corpus):
    """--allow_data_plan_change: the epoch continues from the same fraction of the new plan, with a message."""
    ds = AudioDataset(load_manifest(corpus / "train.tsv"))
    run = build_loader(ds, _cfg(), 2, 0)
    state = _position_after(run, epoch=4, batches=2)
    one_rank = build_loader(ds, _cfg(), 1, 0)  # half the ranks: about twice the batches per rank
    message = one_rank.load_state_dict(state, allow_plan_change=True)
    expected = round(2 * len(one_rank) / len(run))
    assert message is not None and "world_size 2 -> 1" in message and f"batch {expected} of {len(one_rank)}" in message
    one_rank.set_epoch(4)
    assert len(list(one_rank)) == len(one_rank) - expected
    same = build_loader(ds, _cfg(), 2, 0)
    assert same.load_state_dict(state, allow_plan_change=True) is None  # nothing changed: the exact position
    assert same.batch_in_epoch == 2


def test_labelled_padded_validation_loader(corpus):
    ds = open_split(corpus, "train", labels="ltr")
    ld = build_loader(ds, _cfg(pad=True, max_sample_size=None, shuffle=False, filter_long=False, max_tokens=20000))
    batches = list(ld)
    assert sum(len(b["id"]) for b in batches) == 40
    b = batches[0]
    assert b["id"].tolist()[0] == 39  # size order, longest first
    i = b["id"].tolist()
    assert b["lengths"].tolist() == [LENGTHS[k] for k in i]
    assert b["target_lengths"].tolist() == [3 * (1 + k % 3) for k in i]  # "A B |" repeated 1..3 times
    assert b["ntokens"] == int(b["target_lengths"].sum())
    assert (b["target"][b["target_lengths"].argmin(), -1] == 1).item()


def test_summary_and_empty_after_filtering(corpus, caplog):
    ds = AudioDataset(load_manifest(corpus / "train.tsv", min_sample_size=1000))
    ld = build_loader(ds, _cfg(max_tokens=4000, pad=True, max_sample_size=None))
    s = ld.summary
    # lengths 800+97i: < 1000 for i <= 2 (3 skipped); > 4000 for i >= 33 (7 skipped)
    assert (s.entries, s.skipped_short, s.skipped_long, s.kept) == (40, 3, 7, 30)
    # the skip warning names filelist lines (entry i is on line i + 2, after the root line): the longest is i = 39
    assert "7 samples have invalid sizes" in caplog.text and f"{corpus / 'train.tsv'}:41" in caplog.text
    with pytest.raises(DataError, match=r"no utterance of .*train\.tsv is left after filtering.*40 entries"):
        build_loader(ds, _cfg(max_tokens=500, pad=True, max_sample_size=None))
    with pytest.raises(DataError, match="longer than max_tokens"):
        build_loader(ds, _cfg(max_tokens=4000, pad=True, max_sample_size=None, filter_long=False))


def test_concat_batches_sub_batch_sizes(corpus):
    ds = AudioDataset(load_manifest(corpus / "train.tsv"))
    ld = build_loader(ds, _cfg(num_concat_batches=2))
    n_sub = [b["sub_batch_sizes"].tolist() for b in ld]
    assert all(1 <= len(s) <= 2 for s in n_sub)
    assert sum(sum(s) for s in n_sub) == 40
    assert any(len(s) == 2 for s in n_sub)


def test_padding_buckets(corpus):
    ds = AudioDataset(load_manifest(corpus / "train.tsv"))
    ld = build_loader(ds, _cfg(pad=True, max_sample_size=None, max_tokens=20000, num_batch_buckets=2))
    # 'lower' percentiles of 800 + 97 i (i < 40): 50 % -> i = 19 -> 2643; 100 % -> 4583
    seen = 0
    for b in ld:
        longest = max(LENGTHS[k] for k in b["id"].tolist())
        assert b["source"].shape[1] == (2643 if longest <= 2643 else 4583)
        seen += len(b["id"])
    assert seen == 40
    with pytest.raises(ValueError, match="requires pad"):
        build_loader(ds, _cfg(num_batch_buckets=2))


def test_worker_count_is_capped_at_usable_cpus_and_batches(monkeypatch):
    """--num_workers 6 (the reference's default) on a 2-CPU machine starts 2 workers, and never more than there are
    batches to load (one file to transcribe: one worker); 0 stays in-process."""
    import os

    from common.data.loader import usable_workers

    import common.data.loader as loader_module

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(loader_module, "_cgroup_cpu_limit", lambda: None)
    assert usable_workers(6) == 2 and usable_workers(6, 1) == 1 and usable_workers(1, 50) == 1
    assert usable_workers(0, 50) == 0
    # 16 CPUs visible, but a container quota of 2.5 CPUs (docker --cpus 2.5): 3 workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(loader_module, "_cgroup_cpu_limit", lambda: 3)
    assert usable_workers(6) == 3


def test_the_summary_says_when_fewer_workers_start_than_asked(corpus, monkeypatch):
    """--num_workers 6 on a machine that lets this process use 2 CPUs: the printed summary says 2 workers start and
    why (silently fewer workers shows only as a lower throughput); as many as asked: nothing is added."""
    import os

    import common.data.loader as loader_module

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(loader_module, "_cgroup_cpu_limit", lambda: None)
    def summary(workers):
        return build_loader(AudioDataset(load_manifest(corpus / "train.tsv")), _cfg(num_workers=workers)).summary

    assert "; 2 loader workers per rank (--num_workers 6, capped" in summary(6).describe()
    assert "loader workers" not in summary(2).describe()


def test_cgroup_cpu_quota_is_read_from_v2_and_v1_files(tmp_path):
    """The quota in the process's own cgroup wins; "max" / -1 mean no quota; unreadable files mean no quota."""
    from common.data.loader import _cgroup_cpu_limit

    proc = tmp_path / "proc_cgroup"
    # cgroup v2: own cgroup "/job" with 250000 us per 100000 us -> 3 CPUs (rounded up); root says max
    root = tmp_path / "v2"
    (root / "job").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "job" / "cpu.max").write_text("250000 100000\n")
    proc.write_text("0::/job\n")
    assert _cgroup_cpu_limit(str(root), str(proc)) == 3
    (root / "job" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_limit(str(root), str(proc)) is None
    # cgroup v1: cpu,cpuacct controller, quota 100000 per 50000 -> 2 CPUs; -1 means unlimited
    root = tmp_path / "v1"
    (root / "cpu,cpuacct" / "job").mkdir(parents=True)
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("100000\n")
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_period_us").write_text("50000\n")
    proc.write_text("4:memory:/other\n2:cpu,cpuacct:/job\n0::/\n")
    assert _cgroup_cpu_limit(str(root), str(proc)) == 2
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_cpu_limit(str(root), str(proc)) is None
    assert _cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path / "missing_proc")) is None
