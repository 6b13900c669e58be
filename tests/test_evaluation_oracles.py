"""Oracle tests for common/evaluation.py found by mutation testing.

Oracle: docs/INFERENCE.md ("eval_empty_predictions: utterances with an empty hypothesis") and the convention of
common.metrics.WerStats.empty_preds / PITFALLS #11 (a prediction of word separators only holds no word, like a
blank-only one), with hand-built utterance results."""

import pytest

from common.evaluation import EvalResult, UtteranceResult, decode_text

SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"]


def _utt(index, pred_ids, ref_ids):
    hyp = " ".join(decode_text(pred_ids, SYMBOLS, 4).split())
    ref = " ".join(decode_text(ref_ids, SYMBOLS, 4).split())
    return UtteranceResult(index=index, hypothesis=hyp, reference=ref, num_samples=16000, pred_ids=pred_ids,
                           ref_ids=ref_ids)


def test_blank_only_prediction_counts_as_empty():
    res = EvalResult(utterances=[_utt(0, [], [5, 4, 6]), _utt(1, [5, 4, 6], [5, 4, 6])])
    c = res.error_counts()
    assert c["empty_predictions"] == 1 and c["utterances"] == 2
    assert (c["w_errs"], c["w_len"]) == (2, 4)  # "" vs "A B": 2 deletions; "A B" vs "A B": 0


def test_separator_only_prediction_counts_as_empty():
    """docs/INFERENCE.md: empty predictions are utterances with an empty hypothesis; a prediction made only of word
    separators has no word (PITFALLS #11's stuck model), as WerStats.empty_preds counts it in training."""
    utt = _utt(0, [4, 4], [5, 4, 6])  # the greedy output "| |" decodes to an empty hypothesis
    assert utt.hypothesis == ""
    assert EvalResult(utterances=[utt]).error_counts()["empty_predictions"] == 1


def test_ids_outside_the_dictionary_render_as_unk_on_both_sides():
    """-1 is outside [0, len(symbols)) just as len(symbols) is: neither may wrap around to the last symbol."""
    assert decode_text([5, -1, 7, 6], SYMBOLS, 4) == "A<unk><unk>B"


def test_performance_mode_runs_at_least_one_untimed_batch_plus_steps():
    """EvalSettings: steps > 0 runs max(1, warmup_steps) + steps batches (the first one is never timed, as in the
    reference); steps = 0 runs one pass."""
    from common.evaluation import EvalSettings

    assert EvalSettings(symbols=SYMBOLS, steps=5, warmup_steps=0).num_iterations(100) == 6
    assert EvalSettings(symbols=SYMBOLS, steps=5, warmup_steps=3).num_iterations(100) == 8
    assert EvalSettings(symbols=SYMBOLS, steps=0, warmup_steps=3).num_iterations(100) == 100


def test_rates_over_zero_reference_units_are_infinite():
    """REFERENCE.md §3.5: WER = errors / reference words, inf when there are no reference words; the UER over zero
    reference units likewise (never a silent 0 %)."""
    res = EvalResult(utterances=[_utt(0, [5], [])])
    s = res.summary(batch_latency=False)
    assert s["eval_wer"] == float("inf") and s["eval_uer"] == float("inf")


def test_shards_cover_every_batch_once_and_ranks_are_checked():
    """Rank r of W takes batches r, r + W, ...: 5 batches on 2 ranks are [0, 2, 4] and [1, 3]; rank W is outside
    [0, W) and must be refused, not given an empty share."""
    from common.evaluation import shard_batches

    batches = [[i] for i in range(5)]
    assert shard_batches(batches, 2, 0) == [[0], [2], [4]] and shard_batches(batches, 2, 1) == [[1], [3]]
    for bad in (2, -1):
        with pytest.raises(ValueError):
            shard_batches(batches, 2, bad)
