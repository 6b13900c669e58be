"""Audit of inference / decoding / evaluation: regressions found by independent oracles.

* An ARPA file without ``<unk>``: every n-gram above the unigrams must still be found (hand-computed backoff
  scores, and the same file with a ``<unk>`` line as a second oracle; KenLM through flashlight-text when installed).
* Exhaustive search over every frame path (V^T) as the oracle of the lexicon beam search, with homographs and
  alternative spellings, for both merges.
* Non-positive batch limits and non-finite beam-search weights: one ``error:`` line, not a traceback.
* NaN log-probabilities (a broken forward): counted per utterance, the beam search does not crash on them, and
  inference.py warns naming the files.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
import torch

import inference
from common.ctc_decoder import BeamSearchConfig, CTCBeamSearchDecoder, Lexicon, flashlight_available
from common.evaluation import EvalSettings, run_ctc_evaluation
from common.logging import read_dllogger_log
from common.ngram_lm import LN10, NGramLM
from test_ctc_decoder import tiny_ctc_with_lm
from test_ngram_lm import ARPA

# ----------------------------------------------------------------------------------------------- ARPA without <unk>

# ARPA: test_ngram_lm's hand-written trigram model, which has <unk> (removed below)

# log10 P(sentence </s> | <s>) by the backoff recursion, by hand:
HAND = {
    ("a",): -0.4 + (-0.1 - 0.2 - 0.7),            # <s> a ; a </s> missing: bow(<s> a) + bow(a) + p(</s>)
    ("a", "b"): -0.4 - 0.05 - 0.2 - 0.25,         # <s> a ; <s> a b ; b </s> with bow(a b)
    ("b",): (-0.5 - 0.8) - 0.2,                   # <s> b missing: bow(<s>) + p(b) ; b </s>
    ("b", "a"): (-0.5 - 0.8) + (-0.3 - 0.6) + (-0.2 - 0.7),
    ("a", "b", "a"): -0.4 - 0.05 + (-0.25 - 0.3 - 0.6) + (-0.2 - 0.7),
}


def test_arpa_without_unk_keeps_its_ngrams(tmp_path):
    with_unk = tmp_path / "with_unk.arpa"
    no_unk = tmp_path / "no_unk.arpa"
    with_unk.write_text(ARPA)
    no_unk.write_text(ARPA.replace("ngram 1=5", "ngram 1=4").replace("-1.0\t<unk>\n", ""))
    lm_a = NGramLM.load_arpa(str(with_unk))
    lm_b = NGramLM.load_arpa(str(no_unk))
    for words, log10p in HAND.items():
        assert lm_a.sentence_score(list(words)) / LN10 == pytest.approx(log10p, abs=1e-12), words
        assert lm_b.sentence_score(list(words)) / LN10 == pytest.approx(log10p, abs=1e-12), words
    # the added <unk> gets KenLM's floor, and the tables stay those of the file
    assert lm_b.score(lm_b.null_state(), "zzz")[1] == pytest.approx(-100 * LN10)
    assert lm_b.counts() == [5, 3, 1]
    if flashlight_available():  # KenLM reads the same file: same scores
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary as FlDictionary

        words = ["a", "b", "<unk>"]
        kenlm = KenLM(str(no_unk), FlDictionary(words))
        for sent, log10p in HAND.items():
            state, total = kenlm.start(False), 0.0
            for w in sent:
                state, s = kenlm.score(state, words.index(w))
                total += s
            total += kenlm.finish(state)[1]
            assert total == pytest.approx(log10p, abs=1e-5)


# ----------------------------------------------------------------------------------------------- exhaustive oracle

SYM = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"]
SEP = 4
LEX = [("A", "A"), ("AB", "AB"), ("BA", "BA"), ("BB", "BB"), ("AA", "AA"),
       ("X", "AB"),    # a homograph of AB
       ("AB", "ABB")]  # a second spelling of AB
EXACT = dict(beam=10 ** 6, beam_threshold=math.inf, token_threshold=math.inf)


def _collapse(path):
    out, prev = [], None
    for p in path:
        if p != prev and p != 0:
            out.append(p)
        prev = p
    return out


def _word_sequences(labels, spellings):
    """The word sequences a label sequence spells as |* s1 |+ s2 ... sn |* (none if it spells no lexicon words)."""
    if any(lab in (1, 2, 3) for lab in labels):
        return []
    segments = [tuple(SYM.index(c) for c in seg) for seg in "".join(SYM[lab] for lab in labels).split("|") if seg]
    alternatives = [spellings.get(s, []) for s in segments]
    return [tuple(ws) for ws in itertools.product(*alternatives)]


def _exhaustive(lp, lm, lm_weight, word_score, merge):
    spellings = {}
    for w, sp in LEX:
        ids = tuple(SYM.index(c) for c in sp)
        if w not in spellings.setdefault(ids, []):
            spellings[ids].append(w)
    acoustic = {}
    T, V = lp.shape
    for path in itertools.product(range(V), repeat=T):
        s = float(sum(lp[t, p] for t, p in enumerate(path)))
        for words in _word_sequences(_collapse(path), spellings):
            old = acoustic.get(words, -math.inf)
            acoustic[words] = np.logaddexp(old, s) if merge == "sum" else max(old, s)
    return {w: a + (lm_weight * lm.sentence_score(list(w)) if lm is not None else 0.0) + word_score * len(w)
            for w, a in acoustic.items()}


@pytest.mark.parametrize("seed", range(8))
def test_beam_search_equals_exhaustive_path_enumeration(seed):
    rng = np.random.default_rng(100 + seed)
    T = 3 + seed % 3  # 3..5 frames: up to 7^5 paths
    x = rng.normal(size=(T, len(SYM))) * 2.0
    lp = x - np.log(np.exp(x).sum(1, keepdims=True))
    lm = NGramLM.estimate(["A AB", "BA A", "X BB", "AA A AB", "AB AB", "BB"], order=2) if seed % 3 else None
    lm_weight, word_score = float(rng.uniform(0, 1.5)), float(rng.uniform(-1, 1.5))
    merge = "sum" if seed % 2 == 0 else "max"
    lexicon = Lexicon(SYM)
    for w, sp in LEX:
        lexicon.add(w, list(sp))
    dec = CTCBeamSearchDecoder(lexicon, SYM, lm, BeamSearchConfig(lm_weight=lm_weight, word_score=word_score,
                                                                  merge=merge, **EXACT))
    hyp = dec.decode(lp)
    scores = _exhaustive(lp, lm, lm_weight, word_score, merge)
    best = max(scores.values())
    assert hyp.score == pytest.approx(best, abs=1e-9)
    assert scores[tuple(hyp.words)] == pytest.approx(best, abs=1e-9)


# ----------------------------------------------------------------------------------------------- bad flag values


@pytest.mark.parametrize("flag, value", [("--lm_weight", "nan"), ("--word_score", "nan"), ("--lm_weight", "inf"),
                                         ("--word_score", "-inf")])
def test_non_finite_beam_weights_are_refused(flag, value):
    key = flag[2:]
    with pytest.raises(ValueError, match="must be finite"):
        BeamSearchConfig(**{key: float(value)})


@pytest.mark.parametrize("extra, message", [
    (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["--batch_size", "-3"], "--batch_size must be >= 1, got -3"),
    (["--max_duration", "0"], "--max_duration must be > 0 seconds, got 0"),
])
def test_non_positive_batch_limits_are_one_error_line(tmp_path, capsys, extra, message):
    rc = inference.main(["--w2v_path", str(tmp_path / "none.pt"), "--data", str(tmp_path), "--output_dir",
                         str(tmp_path / "out"), "--cpu", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: {message}" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- NaN log-probs


class _NaNRows(torch.nn.Module):
    """Logits peaked on a fixed frame path; the rows listed in ``nan_rows`` (dataset ids) hold NaN in 2 frames."""

    def __init__(self, nan_ids):
        super().__init__()
        self.nan_ids = set(nan_ids)

    def forward(self, waveforms, lengths):
        n = waveforms.shape[1] // 10
        logits = torch.full((waveforms.shape[0], n, len(SYM)), -5.0)
        logits[:, :, 5] = 5.0  # "A" in every frame
        for row in range(waveforms.shape[0]):
            if int(waveforms[row, 0]) in self.nan_ids:
                logits[row, 1:3, :] = float("nan")
        return logits, torch.full((waveforms.shape[0],), n)


def test_nan_log_probs_are_counted_and_do_not_stop_the_beam_search():
    batches = []
    for group in ([0, 1], [2, 3]):
        src = torch.zeros(len(group), 60)
        for r, k in enumerate(group):
            src[r] = float(k)
        batches.append({"id": torch.tensor(group), "source": src, "lengths": torch.full((len(group),), 60)})
    res = run_ctc_evaluation(_NaNRows({1, 2}), batches, EvalSettings(SYM, word_separator=SEP, keep_log_probs=True))
    assert [(u.index, u.nan_frames) for u in res.utterances] == [(0, 0), (1, 2), (2, 2), (3, 0)]
    assert [u.index for u in res.nan_utterances()] == [1, 2]
    lexicon = Lexicon(SYM)
    lexicon.add("A", ["A"])
    decoder = CTCBeamSearchDecoder(lexicon, SYM, None, BeamSearchConfig())
    greedy, _, _ = inference.beam_decode(res, decoder)
    assert [u.hypothesis for u in res.utterances] == ["A", greedy.utterances[1].hypothesis,
                                                      greedy.utterances[2].hypothesis, "A"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_ctc_with_lm(tmp_path_factory.mktemp("audit"), n_train=6, n_valid=5, seed=7, max_s=1.0, order=2)


def test_inference_warns_about_nan_log_probs_naming_the_files(corpus, capsys, monkeypatch):
    """The first row of every batch gets NaN logits in two frames: batches of 2 over 5 utterances -> 0, 2, 4."""
    real_prepare = inference.prepare_model

    class FirstRowNaN(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, source, lengths=None):
            logits, out_lengths = self.model(source, lengths)
            logits = logits.clone()
            logits[0, :2] = float("nan")
            return logits, out_lengths

    monkeypatch.setattr(inference, "prepare_model", lambda *a, **k: FirstRowNaN(real_prepare(*a, **k)))
    out = corpus["tmp"] / "nan"
    rc = inference.main(["--w2v_path", corpus["ckpt"], "--data", corpus["data"], "--valid_subset", "valid",
                         "--output_dir", str(out), "--num_workers", "0", "--cpu", "--batch_size", "2",
                         "--lexicon", corpus["lexicon"], "--lm_path", corpus["lm"]])
    printed = capsys.readouterr().out
    assert rc == 0
    names = [line.split("\t")[0] for line in open(os.path.join(corpus["data"], "valid.tsv")).read().splitlines()[1:]]
    line = next(ln for ln in printed.splitlines() if ln.startswith("WARNING: 3 of 5 utterances have NaN"))
    assert line.endswith(f": {names[0]}, {names[2]}, {names[4]}") and "not beam-searched" in line
    record = [r for r in read_dllogger_log(str(out / "nvlog_infer.json")) if r.get("step") == []][-1]["data"]
    assert record["nan_utterances"] == 3
