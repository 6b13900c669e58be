"""Oracle tests for common/metrics.py's MetricsAggregator found by mutation testing.

Oracle: REFERENCE.md §3.2/§3.3 (reductions, the all-reduce count rule for ``mean``/``last`` keys, ``raw_wer`` from
``wv_errs``, benchmark values appended at each epoch end only) with every expected number computed by hand, and the
aggregator's documented resume contract (open training scopes saved with their running time)."""

import math

import pytest

from common.metrics import MetricsAggregator, MetricsSpec


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_raw_wer_is_from_wv_errs_not_w_errs():
    """§3.2/§3.3: wer = 100 w_errs / w_len, raw_wer = 100 wv_errs / w_len (viterbi errors, which differ from the
    LM-decoded ones when a decoder is used): 2 and 3 errors over 10 words are 20 % and 30 %."""
    agg = MetricsAggregator(MetricsSpec.finetune(), clock=Clock())
    agg.start_scope("val")
    agg.log({"loss": 1.0, "nsentences": 1, "c_errs": 1, "c_len": 4, "w_errs": 2, "wv_errs": 3, "w_len": 10})
    agg.accumulate()
    res = agg.finish_scope("val")
    assert res["wer"] == pytest.approx(20.0) and res["raw_wer"] == pytest.approx(30.0)
    assert res["uer"] == pytest.approx(25.0)


def test_last_keys_are_averaged_over_ranks():
    """§3.3: all_reduce sums every partial over ranks and multiplies the counts of ``mean`` AND ``last`` keys by the
    number of ranks: a ``last`` key logged as 3 on this rank and 5 on the other reads (3 + 5) / 2 = 4, not 8."""
    other = {"grad_norm": 5.0, "loss": 2.0, "ntokens": 2.0}
    agg = MetricsAggregator(MetricsSpec.pretrain(), clock=Clock(),
                            all_reduce_fn=lambda v: [x + other[k] for x, k in zip(v, sorted(other))])
    agg.start_scope("train")
    agg.log({"grad_norm": 3.0, "loss": 2.0, "ntokens": 2.0})
    agg.all_reduce(2)
    agg.accumulate()
    res = agg.finish_scope("train")
    assert res["grad_norm"] == pytest.approx(4.0)
    assert res["loss"] == pytest.approx(4.0 / 4.0 / math.log(2))


def test_zero_normaliser_leaves_losses_alone():
    """Losses are divided by the normaliser only when it is > 0 (Q9 fix): an update whose reduced ntokens is 0 (every
    rank had an empty batch) must not divide 0 by 0; nor does a count of 0 produce an accuracy."""
    agg = MetricsAggregator(MetricsSpec.pretrain(), clock=Clock())
    agg.start_scope("val")
    agg.log({"loss": 0.0, "ntokens": 0.0, "correct": 0.0, "count": 0.0})
    agg.accumulate()
    res = agg.finish_scope("val")
    assert res["loss"] == 0.0 and "accuracy" not in res


def test_saved_open_scope_includes_its_running_time_and_finished_scopes_are_not_saved():
    """A checkpoint taken mid-epoch carries the epoch's time so far: the train_avg timer started at t = 0 and still
    running at t = 7 has 7 s; the log-window scope finished before the save is not carried over."""
    clock = Clock()
    agg = MetricsAggregator(MetricsSpec.pretrain(), clock=clock)
    agg.start_scope("train_avg")
    agg.start_scope("train", timer=False)
    agg.start_timer("train")
    agg.log({"loss": 1.0, "ntokens": 1.0})
    agg.accumulate()
    clock.t = 2.0
    agg.stop_timer("train")
    agg.finish_scope("train")
    clock.t = 7.0
    state = agg.state_dict()
    assert state["scopes"]["train_avg"]["took"] == pytest.approx(7.0)
    assert "train" not in state["scopes"]


def test_resume_reports_an_epoch_average_only_when_train_avg_was_saved_and_can_be_declined():
    """resume_scopes returns True only if the epoch scope (train_avg) was carried over; with apply=False nothing is
    added into the new scopes."""
    saved = {"benchmark": {}, "scopes": {"train": {"sums": {"ntokens": 10.0}, "counts": {"ntokens": 1.0},
                                                   "took": 3.0}}}
    agg = MetricsAggregator(MetricsSpec.pretrain(), clock=Clock())
    agg.load_state_dict(saved)
    agg.start_scope("train", timer=False)
    assert agg.resume_scopes(apply=True) is False  # only the log window was saved
    assert agg.finish_scope("train")["ntokens"] == 10.0

    full = {"benchmark": {}, "scopes": {"train_avg": {"sums": {"ntokens": 10.0}, "counts": {"ntokens": 1.0},
                                                      "took": 3.0}}}
    agg = MetricsAggregator(MetricsSpec.pretrain(), clock=Clock())
    agg.load_state_dict(full)
    agg.start_scope("train_avg", timer=False)
    assert agg.resume_scopes(apply=False) is False
    res = agg.finish_scope("train_avg")
    assert "ntokens" not in res and res["took"] == 0.0


def test_benchmark_takes_epoch_ends_only():
    """§3.3: benchmark values are appended at each epoch end (train_avg), not at every log window (train)."""
    clock = Clock()
    agg = MetricsAggregator(MetricsSpec.pretrain(), clock=clock)
    agg.start_scope("train_avg")
    for window in range(3):
        agg.start_scope("train")
        agg.log({"loss": 1.0, "ntokens": 10.0})
        agg.accumulate()
        clock.t += 1.0
        agg.finish_scope("train")
    agg.finish_scope("train_avg")
    b = agg.benchmark()
    assert b["benchmark_epochs_num"] == 1
    assert b["train_avg_took"] == pytest.approx(3.0) and b["train_avg_ntokens/s"] == pytest.approx(10.0)
