"""common/evaluation.py: batching for inference, greedy decoding, WER/UER, timings, output files (no real model)."""

from __future__ import annotations

import csv
import itertools
import random

import pytest
import torch

from common.evaluation import (EvalResult, EvalSettings, UtteranceResult, decode_text, gather_results,
                               plan_batches, run_ctc_evaluation, shard_batches, throughput_statistics,
                               write_logits, write_predictions)

# word separator deliberately NOT at index 4 (REFERENCE-QUIRKS Q19: the reference assumes index 4)
SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>", "A", "B", "|", "C"]
A, B, SEP, C = 4, 5, 6, 7


# ----------------------------------------------------------------------------------------------- batching


def test_plan_batches_fixed_size_keeps_filelist_order():
    assert plan_batches([5, 1, 3, 2, 4], batch_size=2) == [[0, 1], [2, 3], [4]]
    assert plan_batches([5, 1, 3, 2, 4], batch_size=2, drop_last=True) == [[0, 1], [2, 3]]
    assert plan_batches([5], batch_size=2, drop_last=True) == [[0]]  # never drop everything


def test_plan_batches_by_duration_bounds_padded_audio():
    sr = 10
    sizes = [10, 40, 20, 20, 30, 100]  # samples; budget 6 s = 60 padded samples
    batches = plan_batches(sizes, max_duration=6.0, sample_rate=sr)
    # longest first: 5 (100, alone: longer than the budget), 1 (40), 4 (30) -> 40*2 > 60 split ...
    assert batches == [[5], [1], [4, 2], [3, 0]]
    for b in batches:
        assert len(b) == 1 or max(sizes[i] for i in b) * len(b) <= 60
    assert sorted(itertools.chain.from_iterable(batches)) == list(range(len(sizes)))
    assert plan_batches(sizes, batch_size=1, max_duration=100.0, sample_rate=sr) == [[5], [1], [4], [2], [3], [0]]


def test_plan_batches_needs_a_limit():
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches([1, 2])


def test_shard_batches_cover_every_utterance_once():
    batches = plan_batches(list(range(1, 12)), batch_size=2)
    shards = [shard_batches(batches, 3, r) for r in range(3)]
    flat = sorted(i for s in shards for b in s for i in b)
    assert flat == list(range(11))


# ----------------------------------------------------------------------------------------------- decoding and WER


def test_decode_text_uses_the_real_separator_index():
    assert decode_text([A, B, SEP, C], SYMBOLS, SEP) == "AB C"
    assert decode_text([A, 99], SYMBOLS, SEP) == "A<unk>"


class TableModel(torch.nn.Module):
    """Frame-wise argmax ids from a table: utterance k's waveform is constant k; frames = samples // 10."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.calls = []

    def forward(self, waveforms, lengths):
        self.calls.append(None if lengths is None else lengths.tolist())
        if lengths is None:  # unpadded batch (EvalSettings.unpadded_fast_path)
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1])
        frames = lengths // 10
        logits = torch.full((waveforms.shape[0], int(frames.max()), len(SYMBOLS)), -5.0)
        for row in range(waveforms.shape[0]):
            seq = self.table[int(waveforms[row, 0])]
            assert len(seq) == int(frames[row])
            for t, p in enumerate(seq):
                logits[row, t, p] = 5.0
        return logits, frames


def _batches(table, refs, order):
    out = []
    for group in order:
        n = max(len(table[k]) for k in group) * 10
        src = torch.zeros(len(group), n)
        lens = torch.tensor([len(table[k]) * 10 for k in group])
        for r, k in enumerate(group):
            src[r, : lens[r]] = float(k)
        tl = torch.tensor([len(refs[k]) for k in group])
        tgt = torch.ones(len(group), int(tl.max()), dtype=torch.long)
        for r, k in enumerate(group):
            tgt[r, : tl[r]] = torch.tensor(refs[k])
        out.append({"id": torch.tensor(group), "source": src, "lengths": lens, "target": tgt, "target_lengths": tl})
    return out


# frames (0 = blank): utt 0 "AB C" ; utt 1 "A A" -> "A" (repeat without a blank collapses) then "|" "C"
TABLE = {
    0: [A, A, 0, B, SEP, SEP, C, 0],
    1: [A, A, 0, A, SEP, C],
    2: [0, 0, 0],
}
REFS = {0: [A, B, SEP, C, SEP], 1: [A, SEP, C, SEP], 2: [B, SEP]}


def test_greedy_decoding_and_hand_computed_wer():
    model = TableModel(TABLE)
    res = run_ctc_evaluation(model, _batches(TABLE, REFS, [[0, 1], [2]]), EvalSettings(SYMBOLS, word_separator=SEP))
    assert [u.hypothesis for u in res.utterances] == ["AB C", "AA C", ""]
    assert [u.reference for u in res.utterances] == ["AB C", "A C", "B"]
    c = res.error_counts()
    # words: 0 errors / 2, 1 substitution / 2, 1 deletion / 1 -> 2 / 5
    assert (c["w_errs"], c["w_len"]) == (2, 5)
    # units (incl. separators): utt0 hyp A B | C vs A B | C | -> 1; utt1 A A | C vs A | C | -> 2; utt2 "" vs B | -> 2
    assert (c["c_errs"], c["c_len"]) == (5, 11)
    s = res.summary()
    assert s["eval_wer"] == pytest.approx(40.0)
    assert s["eval_uer"] == pytest.approx(100.0 * 5 / 11)
    assert s["eval_empty_predictions"] == 1


def test_unpadded_batches_are_called_without_lengths():
    model = TableModel(TABLE)
    run_ctc_evaluation(model, _batches(TABLE, REFS, [[0, 1], [2]]), EvalSettings(SYMBOLS, word_separator=SEP))
    assert model.calls == [[80, 60], None]
    model.calls.clear()
    run_ctc_evaluation(model, _batches(TABLE, REFS, [[2]]),
                       EvalSettings(SYMBOLS, word_separator=SEP, unpadded_fast_path=False))
    assert model.calls == [[30]]


def test_results_are_in_filelist_order_whatever_the_batches():
    model = TableModel(TABLE)
    a = run_ctc_evaluation(model, _batches(TABLE, REFS, [[2], [1, 0]]), EvalSettings(SYMBOLS, word_separator=SEP))
    b = run_ctc_evaluation(model, _batches(TABLE, REFS, [[0], [1], [2]]), EvalSettings(SYMBOLS, word_separator=SEP))
    assert [u.index for u in a.utterances] == [0, 1, 2]
    assert [(u.hypothesis, u.pred_ids) for u in a.utterances] == [(u.hypothesis, u.pred_ids) for u in b.utterances]


def test_wer_equals_editdistance_package():
    editdistance = pytest.importorskip("editdistance")
    rng = random.Random(3)
    vocab = ["a", "b", "c", "dd", "e"]
    utts = []
    errs = words = 0
    for i in range(50):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 9))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
        errs += editdistance.eval(hyp, ref)
        words += len(ref)
        utts.append(UtteranceResult(i, " ".join(hyp), " ".join(ref), 1, [1], [1]))
    res = EvalResult(utterances=utts)
    assert res.summary()["eval_wer"] == pytest.approx(100.0 * errs / words)


# ----------------------------------------------------------------------------------------------- timings


def test_latency_percentiles_from_known_timings():
    res = EvalResult(utterances=[UtteranceResult(0, "A", "A", 16000, [4], [4])])
    res.timings["dnn"] = [i / 1000.0 for i in range(1, 26)]  # 1..25 ms
    res.timings["data"] = [0.001] * 25
    res.timings["data+dnn"] = [a + b for a, b in zip(res.timings["dnn"], res.timings["data"])]
    s = res.summary()
    # first 5 dropped -> 6..25 ms (n = 20), descending, index floor(20 * (1 - r)) in float arithmetic:
    # r=0.99 -> floor(0.2)=0 -> 25; r=0.95 -> floor(1.0000000000000009)=1 -> 24; r=0.9 -> floor(1.9999999999999996)=1
    assert s["dnn_latency_0_99"] == pytest.approx(25.0)
    assert s["dnn_latency_0_95"] == pytest.approx(24.0)
    assert s["dnn_latency_0_9"] == pytest.approx(24.0)
    assert s["dnn_latency_0_5"] == pytest.approx(15.5)  # the reference logs the mean under "0_5"
    assert s["data_latency_0_5"] == pytest.approx(1.0)
    res.timings["dnn"] = res.timings["dnn"][:19]
    assert "dnn_latency_0_5" not in res.summary()  # fewer than 20 timed batches: no latencies


def test_throughput_and_rtf():
    t = throughput_statistics({"dnn": [0.5, 0.5], "data+dnn": [1.0, 1.0]}, utterances=8, audio_s=20.0)
    assert t["dnn_throughput_utts_per_s"] == pytest.approx(8.0)
    assert t["dnn_throughput_audio_s_per_s"] == pytest.approx(20.0)
    assert t["dnn_rtf"] == pytest.approx(0.05)
    assert t["data+dnn_rtf"] == pytest.approx(0.1)


class CountingClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def test_warmup_and_steps_cycle_over_the_data():
    model = TableModel(TABLE)
    batches = _batches(TABLE, REFS, [[0, 1], [2]])
    one_pass = run_ctc_evaluation(model, batches, EvalSettings(SYMBOLS, word_separator=SEP), clock=CountingClock())
    assert len(one_pass.timings["dnn"]) == 1  # 2 batches, the first is never timed
    assert one_pass.timings["dnn"] == [1.0] and one_pass.timings["data"] == [1.0]  # each clock read +1 s
    perf = run_ctc_evaluation(model, batches, EvalSettings(SYMBOLS, word_separator=SEP, steps=5, warmup_steps=2),
                              clock=CountingClock())
    assert len(perf.timings["dnn"]) == 5  # exactly --steps measured batches after 2 warm-up batches
    assert perf.iterations == 7
    assert not perf.wer_mode and "eval_wer" not in perf.summary()
    assert [u.index for u in perf.utterances] == [0, 1, 2]  # repeats collapsed
    assert perf.timed_utterances == 2 + 1 + 2 + 1 + 2  # batches 2..6 of the cycle [2 utts, 1 utt]


# ----------------------------------------------------------------------------------------------- files


def test_prediction_and_logit_files(tmp_path):
    model = TableModel(TABLE)
    res = run_ctc_evaluation(model, _batches(TABLE, REFS, [[0, 1, 2]]),
                             EvalSettings(SYMBOLS, word_separator=SEP, keep_log_probs=True))
    res = gather_results(res, keep_log_probs=True)  # no process group: identity
    names = ["a/x.flac", "b/y.flac", "c/z.flac"]
    write_predictions(str(tmp_path / "p.tsv"), res, names)
    with open(tmp_path / "p.tsv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows == [["id", "reference", "hypothesis"], ["a/x.flac", "AB C", "AB C"], ["b/y.flac", "A C", "AA C"],
                    ["c/z.flac", "B", ""]]
    write_logits(str(tmp_path / "l.pt"), res, names, SYMBOLS)
    saved = torch.load(tmp_path / "l.pt")
    assert saved["ids"] == names and saved["symbols"] == SYMBOLS
    assert [tuple(t.shape) for t in saved["log_probs"]] == [(8, 8), (6, 8), (3, 8)]
    for t in saved["log_probs"]:
        assert t.dtype == torch.float32 and torch.allclose(t.exp().sum(-1), torch.ones(t.shape[0]))
    assert saved["log_probs"][0].argmax(-1).tolist() == TABLE[0]
