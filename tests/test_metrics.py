"""WER/UER statistics, CTC collapse, latency and metric aggregation (REFERENCE.md §3.2, §3.3, §3.5, §6.5)."""

import math
import random

import editdistance
import pytest

from common.metrics import (
    MetricsAggregator,
    distributed_sum,
    MetricsSpec,
    WerStats,
    ctc_greedy_collapse,
    ctc_greedy_string,
    edit_distance,
    ids_to_string,
    latency_statistics,
    percentile_descending,
    post_process_letter,
    real_time_factor,
    word_error_rate,
)

# LibriSpeech-like letter dictionary: blank/bos 0, pad 1, eos 2, unk 3, "|" 4 (REFERENCE-QUIRKS §10)
SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M",
           "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]
IDX = {s: i for i, s in enumerate(SYMBOLS)}


def enc(text):
    """'THE CAT' -> ids of T H E | C A T |"""
    return [IDX["|" if ch == " " else ch] for ch in text.strip()] + [IDX["|"]]


@pytest.mark.parametrize("a,b,d", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("", "", 0),
                                   ("flaw", "lawn", 2), ("abc", "abc", 0)])
def test_edit_distance_hand_cases(a, b, d):
    assert edit_distance(a, b) == d
    assert edit_distance(list(a), list(b)) == d


def test_edit_distance_matches_editdistance_package():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(5) for _ in range(rng.randrange(12))]
        b = [rng.randrange(5) for _ in range(rng.randrange(12))]
        assert edit_distance(a, b) == editdistance.eval(a, b)
    for _ in range(100):  # long sequences (multi-word bit vectors), small and large alphabets
        k = rng.choice([2, 4, 30])
        a = [rng.randrange(k) for _ in range(rng.randrange(300))]
        b = [rng.randrange(k) for _ in range(rng.randrange(300))]
        assert edit_distance(a, b) == editdistance.eval(a, b)
    words_a, words_b = "the cat sat on the mat".split(), "a cat sat in the hat".split()
    assert edit_distance(words_a, words_b) == editdistance.eval(words_a, words_b) == 3


def test_edit_distance_unhashable_elements():
    assert edit_distance([[1], [2], [3]], [[1], [3]]) == 1


def test_ctc_greedy_collapse():
    assert ctc_greedy_collapse([0, 5, 5, 0, 5, 6, 6]) == [5, 5, 6]
    assert ctc_greedy_collapse([6, 6, 6, 5, 0, 0, 5]) == [6, 5, 5]
    assert ctc_greedy_collapse([0, 0, 0]) == []
    assert ctc_greedy_collapse([]) == []
    assert ctc_greedy_string([0, 6, 6, 11, 5, 0, 4, 4], SYMBOLS) == "THE|"


def test_string_and_letter_post_processing():
    ids = [0] + enc("THE CAT") + [2]
    s = ids_to_string(ids, SYMBOLS)
    assert s == "T H E | C A T |"                     # <s> and </s> removed, space separated
    assert post_process_letter(s) == "THE CAT"
    assert post_process_letter("| A | | B |") == "A B"
    assert ids_to_string([99], SYMBOLS) == "<unk>"


def test_wer_stats_hand_computed():
    st = WerStats()
    # ref "THE CAT SAT" (12 tokens), prediction "THE CAR SAT" -> 1 char error, 1 word error
    ref = enc("THE CAT SAT")
    pred = enc("THE CAR SAT")
    st.add(pred, ref, SYMBOLS)
    assert (st.c_errs, st.c_len, st.w_errs, st.wv_errs, st.w_len) == (1, 12, 1, 1, 3)
    # frames with blanks and repeats: "A" then blank-only output for a second utterance
    frames = [0, IDX["A"], IDX["A"], 0, IDX["|"], 0]
    st.add_frames(frames, enc("A"), SYMBOLS)
    st.add_frames([0, 0, 0, 0], enc("NO"), SYMBOLS)     # blank-only: 3 deletions, 1 word
    assert (st.c_errs, st.c_len) == (1 + 0 + 3, 12 + 2 + 3)
    assert (st.w_errs, st.w_len) == (1 + 0 + 1, 3 + 1 + 1)
    assert st.empty_preds == 1 and st.n_utts == 3
    assert st.uer == pytest.approx(100 * 4 / 17) and st.wer == pytest.approx(40.0)
    # a stuck model that emits only word separators outputs no word either (PITFALLS #11)
    st.add_frames([IDX["|"], 0, IDX["|"], IDX["|"]], enc("NO"), SYMBOLS)
    assert st.empty_preds == 2 and st.n_utts == 4
    assert st.log_dict()["w_len"] == 6


def test_word_error_rate_reference_semantics():
    wer, errs, words = word_error_rate(["the cat sat", "a", "extra ignored"], ["the cat sat on", "b"])
    assert (errs, words) == (2, 5) and wer == pytest.approx(0.4)
    with pytest.raises(ValueError):
        word_error_rate(["x"], ["x", "y"])
    assert math.isinf(word_error_rate([""], [""])[0])


def test_percentiles_descending_index_rule():
    vals = list(range(1, 101))
    random.Random(1).shuffle(vals)
    assert percentile_descending(vals, 0.9) == 91
    assert percentile_descending(vals, 0.95) == 95
    assert percentile_descending(vals, 0.99) == 99
    assert percentile_descending([5.0, 1.0, 3.0], 0.99) == 5.0   # floor(3*0.01) = 0 -> the maximum


def test_latency_statistics_known_timings():
    timings = [1.0] * 5 + [i / 1000.0 for i in range(1, 101)]   # first 5 timed values are dropped
    out = latency_statistics(timings, stage="dnn")
    assert out["dnn_latency_0_5"] == pytest.approx(50.5)
    assert out["dnn_latency_0_9"] == pytest.approx(91.0)
    assert out["dnn_latency_0_95"] == pytest.approx(95.0)
    assert out["dnn_latency_0_99"] == pytest.approx(99.0)
    assert set(out) == {"dnn_latency_0_5", "dnn_latency_0_9", "dnn_latency_0_95", "dnn_latency_0_99"}
    assert latency_statistics([0.01] * 19) is None                # "Not enough samples to measure latencies."
    assert "data+dnn_latency_0_99" in latency_statistics([0.01] * 25, stage="data+dnn")


def test_real_time_factor():
    assert real_time_factor(2.0, 10.0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        real_time_factor(1.0, 0.0)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _mb(loss, ntok, correct, pp, cp, temp=2.0):
    return {"loss": loss, "ntokens": ntok, "nsentences": 2, "sample_size": ntok, "correct": correct,
            "count": ntok, "prob_perplexity": pp, "code_perplexity": cp, "temp": temp, "loss_0": loss - 1,
            "loss_1": 1.0}


def test_pretrain_aggregation_one_interval():
    clock = FakeClock()
    agg = MetricsAggregator(MetricsSpec.pretrain(), clock=clock)
    agg.start_scope("train_avg")
    agg.start_scope("train", timer=False)
    # update 1: two micro-batches
    agg.start_timer("train")
    agg.log(_mb(100.0, 50, 20, 300.0, 280.0))
    agg.log(_mb(60.0, 30, 10, 200.0, 260.0))
    agg.all_reduce(1)
    agg["lr"] = 1e-4
    agg["loss_scale"] = 128.0
    agg.accumulate()
    clock.t = 2.0
    agg.stop_timer("train")
    # update 2: one micro-batch
    clock.t = 3.0
    agg.start_timer("train")
    agg.log(_mb(40.0, 20, 15, 100.0, 100.0))
    agg["lr"] = 2e-4
    agg["loss_scale"] = 256.0
    agg.accumulate()
    clock.t = 4.0
    agg.stop_timer("train")
    res = agg.finish_scope("train")
    l1, l2 = 160 / 80 / math.log(2), 40 / 20 / math.log(2)
    assert res["loss"] == pytest.approx((l1 + l2) / 2)              # mean of per-update normalised losses
    assert res["loss_0"] == pytest.approx((158 / 80 + 39 / 20) / math.log(2) / 2)
    assert res["accuracy"] == pytest.approx((30 / 80 + 15 / 20) / 2)
    assert res["prob_perplexity"] == pytest.approx((300 + 200 + 100) / 3)   # mean over micro-batches
    assert res["temp"] == pytest.approx(2.0)
    assert res["ntokens"] == pytest.approx(50.0)                   # per-update average
    assert res["lr"] == pytest.approx(1.5e-4)
    assert res["loss_scale"] == pytest.approx(192.0)               # Q1 fixed: not divided by ntokens*ln2
    assert res["took"] == pytest.approx(3.0)                       # 2 s + 1 s of update time
    assert res["ntokens/s"] == pytest.approx(100 / 3.0)
    clock.t = 10.0
    avg = agg.finish_scope("train_avg")
    assert avg["took"] == pytest.approx(10.0) and avg["ntokens/s"] == pytest.approx(10.0)
    data = agg.dllogger_data("train", res)
    assert list(data)[:3] == ["train_loss", "train_ntokens", "train_accuracy"]
    assert "train_ntokens/s" in data and "train_loss_0" not in data and "train_correct" not in data


def test_model_flops_throughput_and_mfu():
    """``tflop/s`` = the steps' summed ``flops`` (over micro-batches and ranks) / the scope's time; ``mfu`` divides
    by the peak given for all ranks together, and is left out without one."""
    for peak, expect_mfu in ((4e12, True), (None, False)):
        clock = FakeClock()
        agg = MetricsAggregator(MetricsSpec.finetune(), clock=clock, peak_flops=peak,
                                all_reduce_fn=lambda values: [2 * v for v in values])  # two ranks, equal partials
        agg.start_scope("train")
        agg.log({"loss": 1.0, "ntokens": 10, "nsentences": 1, "flops": 3e12})
        agg.log({"loss": 1.0, "ntokens": 10, "nsentences": 1, "flops": 1e12})
        agg.all_reduce(2)
        agg.accumulate()
        clock.t = 2.0
        res = agg.finish_scope("train")
        assert res["tflop/s"] == pytest.approx(8.0 / 2.0)  # (3 + 1) x 2 ranks TFLOP in 2 s
        assert "data_wait" not in res  # (no data_s logged)
        assert ("mfu" in res) is expect_mfu
        if expect_mfu:
            assert res["mfu"] == pytest.approx(4.0 / 4.0)
            assert list(agg.dllogger_data("train", res))[-3:] == ["train_ntokens/s", "train_tflop/s", "train_mfu"]


def test_data_wait_fraction():
    """``data_wait`` = the updates' ``data_s`` (set once per update, rank 0's) summed over the scope / its time."""
    clock = FakeClock()
    agg = MetricsAggregator(MetricsSpec.pretrain(), clock=clock)
    agg.start_scope("train")
    for wait in (0.5, 1.5):
        agg.log({"loss": 1.0, "ntokens": 10})
        agg["data_s"] = wait
        agg.accumulate()
    clock.t = 8.0
    res = agg.finish_scope("train")
    assert res["data_wait"] == pytest.approx(2.0 / 8.0)
    assert agg.dllogger_data("train", res)["train_data_wait"] == pytest.approx(0.25)


def test_q1_reproducible():
    agg = MetricsAggregator(MetricsSpec.pretrain(normalize_loss_scale=True), clock=FakeClock())
    agg.start_scope("train")
    agg.log({"loss": 8.0, "ntokens": 4})
    agg["loss_scale"] = 128.0
    agg.accumulate()
    assert agg.finish_scope("train")["loss_scale"] == pytest.approx(128 / 4 / math.log(2))


def test_finetune_validation_wer_and_sentence_normalisation():
    agg = MetricsAggregator(MetricsSpec.finetune(), clock=FakeClock())
    agg.start_scope("val")
    for loss, nsent, c_errs, c_len, w_errs, w_len in ((20.0, 2, 3, 10, 1, 4), (10.0, 5, 1, 10, 0, 4)):
        agg.log({"loss": loss, "ntokens": c_len, "nsentences": nsent, "sample_size": nsent, "c_errs": c_errs,
                 "c_len": c_len, "w_errs": w_errs, "wv_errs": w_errs, "w_len": w_len})
        agg.all_reduce(1)
        agg.accumulate()
    res = agg.finish_scope("val")
    assert res["loss"] == pytest.approx((20 / 2 + 10 / 5) / 2 / math.log(2))   # per-batch average (Q22)
    assert res["uer"] == pytest.approx(20.0) and res["wer"] == pytest.approx(12.5)
    assert res["raw_wer"] == pytest.approx(12.5)
    assert "val_wer" in agg.dllogger_data("val", res)


def _two_rank_hook(other_rank_partials):
    def hook(values):
        keys = sorted(other_rank_partials)
        return [v + other_rank_partials[k] for v, k in zip(values, keys)]
    return hook


def test_all_reduce_two_ranks_mean_keys_and_normalisation():
    other = {"code_perplexity": 100.0, "correct": 30.0, "count": 40.0, "loss": 40.0, "nsentences": 1.0,
             "ntokens": 40.0, "prob_perplexity": 100.0, "sample_size": 40.0}
    agg = MetricsAggregator(MetricsSpec.pretrain(), all_reduce_fn=_two_rank_hook(other), clock=FakeClock())
    agg.start_scope("train")
    agg.log({"loss": 20.0, "ntokens": 10.0, "nsentences": 1.0, "sample_size": 10.0, "correct": 5.0, "count": 10.0,
             "prob_perplexity": 300.0, "code_perplexity": 200.0})
    agg.all_reduce(2)
    assert agg["sample_size"] == 50.0                                 # S for the gradient factor W/S
    agg.accumulate()
    res = agg.finish_scope("train")
    assert res["loss"] == pytest.approx(60 / 50 / math.log(2))
    assert res["accuracy"] == pytest.approx(35 / 50)
    assert res["prob_perplexity"] == pytest.approx(200.0)             # mean over ranks
    assert res["code_perplexity"] == pytest.approx(150.0)


def test_validation_with_empty_rank_batch_q9_fixed():
    # rank 1 had an empty padding batch: zeros and ignore = 1
    other = {"ignore": 1.0, "loss": 0.0, "nsentences": 0.0, "ntokens": 0.0, "prob_perplexity": 0.0,
             "sample_size": 0.0}
    agg = MetricsAggregator(MetricsSpec.finetune(), all_reduce_fn=_two_rank_hook(other), clock=FakeClock())
    agg.start_scope("val")
    agg.log({"ignore": 0.0, "loss": 12.0, "nsentences": 3.0, "ntokens": 30.0, "prob_perplexity": 7.0,
             "sample_size": 3.0})
    agg.all_reduce(2)
    agg.accumulate()
    res = agg.finish_scope("val")
    assert res["loss"] == pytest.approx(4 / math.log(2))              # normalised although ignore > 0
    assert res["prob_perplexity"] == pytest.approx(7.0)               # averaged over the W - ignore = 1 rank


def test_benchmark_keeps_last_n_epochs_and_omits_missing_accuracy():
    clock = FakeClock()
    agg = MetricsAggregator(MetricsSpec.finetune(), benchmark_epochs_num=3, clock=clock)
    for epoch, (loss, ntok) in enumerate([(100.0, 10), (8.0, 20), (4.0, 30), (2.0, 40)]):
        clock.t = 10.0 * epoch
        agg.start_scope("train_avg")
        agg.log({"loss": loss, "ntokens": ntok, "nsentences": 1})
        agg.accumulate()
        clock.t = 10.0 * epoch + 5.0
        agg.finish_scope("train_avg")
    b = agg.benchmark()
    assert b["benchmark_epochs_num"] == 3
    assert b["train_avg_took"] == pytest.approx(5.0)
    assert b["train_avg_ntokens/s"] == pytest.approx((20 + 30 + 40) / 5 / 3)
    assert b["train_avg_loss"] == pytest.approx((8 + 4 + 2) / math.log(2) / 3)
    assert "train_avg_accuracy" not in b                              # Q17: not reported as 0
    agg2 = MetricsAggregator(MetricsSpec.finetune(), benchmark_epochs_num=3)
    agg2.load_state_dict(agg.state_dict())
    assert agg2.benchmark() == b


def test_unknown_reduction_rejected():
    spec = MetricsSpec("pretrain", {"x": "median"}, "ntokens", ("x",))
    with pytest.raises(ValueError):
        MetricsAggregator(spec).log({"x": 1.0})


def test_distributed_sum_is_identity_without_process_group():
    assert distributed_sum([1.5, 2.0]) == [1.5, 2.0]
    agg = MetricsAggregator(MetricsSpec.pretrain())
    agg.log({"loss": 2.0, "ntokens": 1.0})
    agg.all_reduce(1)
    assert agg["loss"] == 2.0


def test_tensor_logs_are_read_later_with_the_same_results():
    """Micro-batch logs holding 0-d tensors (as the criteria return them, to avoid one device read per value) give
    exactly the partials and scope averages of the same logs as Python numbers: order-sensitive ``last`` keys,
    ``mean`` counts, and item assignment in between included."""
    import torch

    logs = [{"loss": 3.25, "ntokens": 8, "correct": 5, "count": 8, "prob_perplexity": 100.5, "temp": 1.5},
            {"loss": 2.75, "ntokens": 6, "correct": 4, "count": 6, "prob_perplexity": 90.25, "temp": 1.25}]
    results = []
    for as_tensor in (False, True):
        agg = MetricsAggregator(MetricsSpec.pretrain())
        agg.start_scope("train", timer=False)
        for log in logs:
            agg.log({k: torch.tensor(v, dtype=torch.float32) if as_tensor and k != "ntokens" else v
                     for k, v in log.items()})
        agg["lr"] = 1e-3
        results.append(agg.partials)
        agg.accumulate()
        results.append({k: v for k, v in agg.finish_scope("train").items() if k not in ("took", "ntokens/s")})
    assert results[0] == results[2] and results[1] == results[3]
    assert results[3]["temp"] == 1.375 and results[3]["accuracy"] == 9 / 14
    agg = MetricsAggregator(MetricsSpec.pretrain())
    agg.log({"loss": torch.tensor(float("nan"))})
    agg.discard()  # a skipped update: its pending entries go too
    assert agg.partials == {}


def test_sync_scopes_wait_for_the_device_and_per_update_timers_do_not():
    """train_avg and val are timed like the reference's (a device synchronisation at their start and end, so queued
    GPU work is inside the epoch); the per-update train timer adds none (its update already reads its results)."""
    calls = []
    agg = MetricsAggregator(MetricsSpec.pretrain(), synchronize=lambda: calls.append("sync"), clock=lambda: 0.0)
    agg.start_scope("train_avg", sync=True)
    agg.start_scope("train", timer=False)
    agg.start_timer("train")
    agg.stop_timer("train")
    assert calls == ["sync"]
    agg.finish_scope("train")
    agg.finish_scope("train_avg", sync=True)
    assert calls == ["sync", "sync"]
