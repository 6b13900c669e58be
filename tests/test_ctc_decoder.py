"""common/ctc_decoder.py and inference.py's beam search.

Oracles: brute force over word sequences with ``torch.nn.functional.ctc_loss`` (the exact CTC sum over alignments)
plus the LM and word scores; flashlight-text's LexiconDecoder (C++, KenLM) when installed; greedy decoding.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re

import numpy as np
import pytest
import torch

import inference
from common.ctc_decoder import (BeamSearchConfig, CTCBeamSearchDecoder, Lexicon, LexiconError,
                                flashlight_available, letter_spelling)
from common.data import Dictionary
from common.evaluation import EvalSettings, run_ctc_evaluation
from common.logging import read_dllogger_log
from common.metrics import ctc_greedy_collapse
from common.ngram_lm import NGramLM
from common.ngram_lm import main as build_lm
from conftest import make_corpus
from wav2vec2 import Wav2Vec2ForCTC, preset
from wav2vec2.checkpoint import model_checkpoint

SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B", "C", "L"]
SEP = 4
WORDS = ["A", "AB", "BA", "ALL", "CAB", "LA"]
TEXT = ["A BA", "AB ALL", "CAB A LA", "LA LA A", "BA CAB", "ALL A"]
EXACT = dict(beam=10 ** 6, beam_threshold=math.inf, token_threshold=math.inf)


@pytest.fixture(scope="module")
def lexicon():
    return Lexicon.from_words(WORDS, SYMBOLS)


@pytest.fixture(scope="module")
def lm():
    return NGramLM.estimate(TEXT, order=3)


def ids(text):
    return [SYMBOLS.index(c) for c in text]


def random_log_probs(rng, T, scale=2.0):
    return torch.log_softmax(torch.tensor(rng.normal(size=(T, len(SYMBOLS))) * scale), -1).numpy()


def path_log_probs(path, p=0.9, V=len(SYMBOLS)):
    """Frames peaked on the symbols of ``path`` ('_' = blank, '|' = separator): p on it, the rest spread."""
    lp = np.full((len(path), V), math.log((1 - p) / (V - 1)))
    for t, c in enumerate(path):
        lp[t, 0 if c == "_" else SYMBOLS.index(c)] = math.log(p)
    return lp


# ----------------------------------------------------------------------------------------------- brute force


def label_sequences(words, T):
    """Every label sequence the decoder counts for ``words``: |* s1 |+ s2 ... |+ sn |* (at most T labels)."""
    spell = [ids(w) for w in words]
    n = len(spell)
    budget = T - sum(len(s) for s in spell) - max(0, n - 1)  # separators beyond the required ones

    def gaps(i, left):  # separators after word i-1 (i = 0: before the first word), as extra over the minimum
        if i > n:
            yield ()
            return
        for g in range(left + 1):
            for rest in gaps(i + 1, left - g):
                yield (g,) + rest

    if budget < 0:
        return []
    out = []
    for extra in gaps(0, budget):
        if n == 0 and any(extra[1:]):
            continue
        seq = [SEP] * extra[0]
        for i, s in enumerate(spell, start=1):
            seq += s + [SEP] * (extra[i] + (1 if i < n else 0))
        out.append(seq)
    return out


def brute_force(lp, lm, lm_weight, word_score, max_words):
    """{word sequence: exact score}: ln sum over label sequences and alignments (ctc_loss) + LM + word score."""
    T = lp.shape[0]
    seqs, owner = [], []
    for n in range(max_words + 1):
        for words in itertools.product(WORDS, repeat=n):
            for s in label_sequences(words, T):
                seqs.append(s)
                owner.append(words)
    width = max(1, max(len(s) for s in seqs))
    targets = torch.tensor([s + [1] * (width - len(s)) for s in seqs])
    x = torch.tensor(lp, dtype=torch.float64)[:, None, :].expand(T, len(seqs), lp.shape[1])
    nll = torch.nn.functional.ctc_loss(x, targets, torch.full((len(seqs),), T), torch.tensor([len(s) for s in seqs]),
                                       blank=0, reduction="none", zero_infinity=False)
    acoustic = {}
    for words, v in zip(owner, (-nll).tolist()):
        acoustic[words] = np.logaddexp(acoustic.get(words, -np.inf), v)
    return {w: a + (lm_weight * lm.sentence_score(list(w)) if lm is not None else 0.0) + word_score * len(w)
            for w, a in acoustic.items() if a > -np.inf}


@pytest.mark.parametrize("seed", range(12))
def test_exact_search_matches_brute_force(seed, lexicon, lm):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(5, 10))
    lp = random_log_probs(rng, T)
    lm_weight, word_score = float(rng.uniform(0, 1.5)), float(rng.uniform(-1, 1.5))
    use_lm = seed % 3 != 2  # some cases without an LM
    scores = brute_force(lp, lm if use_lm else None, lm_weight, word_score, max_words=3)
    best = max(scores, key=scores.get)
    dec = CTCBeamSearchDecoder(lexicon, SYMBOLS, lm if use_lm else None,
                               BeamSearchConfig(lm_weight=lm_weight, word_score=word_score, **EXACT))
    hyp = dec.decode(lp)
    assert tuple(hyp.words) == best
    assert hyp.score == pytest.approx(scores[best], abs=1e-9)
    assert hyp.tokens == [t for w in best for t in ids(w) + [SEP]]


def test_default_beam_finds_the_best_on_peaky_input(lexicon, lm):
    """Peaked posteriors of a lexicon path: the pruned default search returns the exact best too."""
    rng = np.random.default_rng(11)
    for path in ("_AB_|_A|", "CAB||LA_", "A_LL|BA|", "__BA|"):
        lp = path_log_probs(path, p=0.8) + rng.normal(size=(len(path), len(SYMBOLS))) * 0.3
        lp = torch.log_softmax(torch.tensor(lp), -1).numpy()
        scores = brute_force(lp, lm, 0.5, 0.2, max_words=3)
        hyp = CTCBeamSearchDecoder(lexicon, SYMBOLS, lm, BeamSearchConfig(lm_weight=0.5, word_score=0.2)).decode(lp)
        assert tuple(hyp.words) == max(scores, key=scores.get)


# ----------------------------------------------------------------------------------------------- CTC rules


def test_repeated_letters_need_a_blank(lexicon):
    dec = CTCBeamSearchDecoder(Lexicon.from_words(["AL", "ALL"], SYMBOLS), SYMBOLS, None,
                               BeamSearchConfig(lm_weight=0.0))
    assert dec.decode(path_log_probs("ALL|")).words == ["AL"]       # L L without blank = one L
    assert dec.decode(path_log_probs("AL_L|")).words == ["ALL"]
    assert dec.decode(path_log_probs("AALL_L|")).words == ["ALL"]
    two = CTCBeamSearchDecoder(Lexicon.from_words(["A"], SYMBOLS), SYMBOLS, None, BeamSearchConfig())
    assert two.decode(path_log_probs("AA|A")).words == ["A", "A"]   # separator between words
    assert two.decode(path_log_probs("A_A")).words == ["A"]          # no implicit word boundary: best is one A


def test_end_of_utterance_completes_only_lexicon_words():
    dec = CTCBeamSearchDecoder(Lexicon.from_words(["AB", "ABC"], SYMBOLS), SYMBOLS, None, BeamSearchConfig())
    assert dec.decode(path_log_probs("AB")).words == ["AB"]          # no final '|' needed
    assert dec.decode(path_log_probs("ABC_")).words == ["ABC"]
    assert dec.decode(path_log_probs("AB|ABC|")).words == ["AB", "ABC"]
    # "AB|A" ends inside a word that is not complete: the best complete alternative wins
    assert dec.decode(path_log_probs("AB|A", p=0.6)).words in (["AB"], ["AB", "AB"])
    assert dec.decode(np.zeros((0, len(SYMBOLS)))).words == []


def test_words_outside_the_lexicon_never_appear(lexicon, lm):
    rng = np.random.default_rng(5)
    dec = CTCBeamSearchDecoder(lexicon, SYMBOLS, lm, BeamSearchConfig(beam=8, token_threshold=5.0))
    for _ in range(30):
        hyp = dec.decode(random_log_probs(rng, int(rng.integers(5, 40)), scale=3.0))
        assert set(hyp.words) <= set(WORDS)
    # greedy spells CABB and BAC (not words): the output is made of lexicon words only
    hyp = dec.decode(path_log_probs("CAB_B|BAC|"))
    assert hyp.words and set(hyp.words) <= set(WORDS)


def test_greedy_output_is_kept_when_it_is_all_lexicon_words(lexicon, lm):
    rng = np.random.default_rng(3)
    for path in ("_A_|BA||_CAB|", "AL_L|LA|A|", "CAB|A_L_L|"):
        lp = path_log_probs(path, p=0.7) + rng.normal(size=(len(path), len(SYMBOLS))) * 0.2
        greedy_ids = ctc_greedy_collapse(lp.argmax(-1))
        greedy = "".join(SYMBOLS[i] for i in greedy_ids).replace("|", " ").split()
        hyp = CTCBeamSearchDecoder(lexicon, SYMBOLS, lm, BeamSearchConfig(lm_weight=0.0)).decode(lp)
        assert hyp.words == greedy


def test_lm_weight_and_word_score_steer_the_choice():
    """An ambiguous L/A frame: acoustics prefer BAL, the LM knows only BAA; a big word score splits BAA into two
    words (a '|' instead of the blank between the A's)."""
    lex = Lexicon.from_words(["BAL", "BAA", "BA", "A"], SYMBOLS)
    lm = NGramLM.estimate(["BAA"] * 20 + ["BA"], order=2)
    lp = path_log_probs("BA_L|", p=0.9)
    lp[3, SYMBOLS.index("A")] = math.log(0.09)  # L 0.9 vs A 0.09
    assert CTCBeamSearchDecoder(lex, SYMBOLS, lm, BeamSearchConfig(lm_weight=0.0)).decode(lp).words == ["BAL"]
    assert CTCBeamSearchDecoder(lex, SYMBOLS, lm, BeamSearchConfig(lm_weight=2.0)).decode(lp).words == ["BAA"]
    lp = path_log_probs("BA_A|", p=0.9)
    assert CTCBeamSearchDecoder(lex, SYMBOLS, None, BeamSearchConfig()).decode(lp).words == ["BAA"]
    assert CTCBeamSearchDecoder(lex, SYMBOLS, None, BeamSearchConfig(word_score=10.0)).decode(lp).words == ["BA", "A"]


# ----------------------------------------------------------------------------------------------- flashlight


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_max_merge_matches_flashlight_lexicon_decoder(tmp_path, lexicon, lm, capfd):
    """flashlight keeps the best alignment (log_add=False) and merges hypotheses by LM state, which is exact for the
    best path; with a wide beam both must return the same words and score. Inputs end on a certain '|' because
    flashlight only ends on a word boundary (ours also accepts a complete word without it)."""
    arpa = str(tmp_path / "lm.arpa")
    lm.write_arpa(arpa)
    rng = np.random.default_rng(1)
    for trial in range(25):
        T = int(rng.integers(6, 16))
        x = rng.normal(size=(T, len(SYMBOLS))) * 2.0
        x[-1, SEP] += 30
        lp = torch.log_softmax(torch.tensor(x), -1).numpy()
        kw = dict(beam=5000, beam_threshold=1e9, token_threshold=math.inf, lm_weight=float(rng.uniform(0, 1.5)),
                  word_score=float(rng.uniform(-1, 1)), merge="max")
        ours = CTCBeamSearchDecoder(lexicon, SYMBOLS, lm, BeamSearchConfig(**kw)).decode(lp)
        fl = CTCBeamSearchDecoder(lexicon, SYMBOLS, lm, BeamSearchConfig(backend="flashlight", **kw),
                                  lm_path=arpa).decode(lp)
        assert ours.words == fl.words, trial
        assert ours.score == pytest.approx(fl.score, abs=1e-3)  # flashlight computes in float32
    # the default (sum) search and flashlight's defaults agree on clear input
    lp = path_log_probs("_CAB|A|LA|", p=0.8)
    assert CTCBeamSearchDecoder(lexicon, SYMBOLS, lm, BeamSearchConfig(backend="flashlight"),
                                lm_path=arpa).decode(lp).words == ["CAB", "A", "LA"]
    capfd.readouterr()


# ----------------------------------------------------------------------------------------------- lexicon files


def test_lexicon_file_format_and_errors(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text("ALL\tA L L |\nBA\tB A\n\nAB\tA B |\nAB\tA B |\nBAL\tB A L |\nBAL\tB A L L |\n")
    lex = Lexicon.load(str(path), SYMBOLS)
    assert lex.words == ["ALL", "BA", "AB", "BAL"]
    assert lex.spellings[lex.word_index["BAL"]] == [tuple(ids("BAL")), tuple(ids("BALL"))]
    dec = CTCBeamSearchDecoder(lex, SYMBOLS, None, BeamSearchConfig())
    assert dec.decode(path_log_probs("BAL_L|")).words == ["BAL"]  # an alternative spelling

    def fails(text, *needles):
        path.write_text(text)
        with pytest.raises(LexiconError) as info:
            Lexicon.load(str(path), SYMBOLS)
        for needle in needles:
            assert needle in str(info.value)

    fails("AB\tA B |\nXY\tX Y |\n", f"{path}:2:", "'XY'", "'X'")
    fails("AB\tA B |\nAH\tAA1 HH |\n", f"{path}:2:", "phonetic lexicon")
    fails("AB\tA | B |\n", f"{path}:1:", "separator inside")
    fails("AB\t|\n", f"{path}:1:", "empty spelling")
    fails("AB\n", f"{path}:1:", "expected 'WORD")
    fails("AB\t<unk> |\n", f"{path}:1:", "'<unk>'")
    fails("\n", "the lexicon is empty")
    with pytest.raises(FileNotFoundError, match="lexicon not found"):
        Lexicon.load(str(tmp_path / "missing.txt"), SYMBOLS)
    with pytest.raises(LexiconError, match="word separator"):
        Lexicon(["<s>", "<pad>", "</s>", "<unk>", "A"])
    assert letter_spelling("CAB", SYMBOLS) == ["C", "A", "B"]
    with pytest.raises(LexiconError, match=re.escape("'|'")):
        letter_spelling("A|B", SYMBOLS)


def test_config_validation():
    for bad in (dict(beam=0), dict(merge="avg"), dict(backend="kenlm"), dict(beam_threshold=0.0),
                dict(token_beam=0)):
        with pytest.raises(ValueError):
            BeamSearchConfig(**bad)


# ----------------------------------------------------------------------------------------------- evaluation level


class FixedLogits(torch.nn.Module):
    """Returns the given per-utterance logits; utterance k is the waveform filled with k."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, waveforms, lengths):
        rows = [self.table[int(w[0])] for w in waveforms]
        T = max(r.shape[0] for r in rows)
        out = torch.full((len(rows), T, rows[0].shape[1]), -30.0)
        out[:, :, 0] = 0.0
        for i, r in enumerate(rows):
            out[i, :r.shape[0]] = torch.tensor(r, dtype=torch.float32)
        return out, torch.tensor([r.shape[0] for r in rows])


def test_lexicon_corrects_a_near_miss_spelling_at_the_evaluation_level():
    """Greedy output HELO WORD (one letter off each); the lexicon has HELLO and WORLD: the beam search fixes both,
    eval_wer drops from 100 to 0 while the greedy copy keeps the greedy numbers."""
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "|", "H", "E", "L", "O", "W", "R", "D", "P"]
    V = len(symbols)

    def frames(spec):
        lp = np.full((len(spec), V), math.log(0.01))
        for t, probs in enumerate(spec):
            for c, pr in probs.items():
                lp[t, 0 if c == "_" else symbols.index(c)] = math.log(pr)
        return lp

    one = lambda c: {c: 0.9}  # noqa: E731
    near = frames([one("H"), one("E"), one("L"), one("_"), {"O": 0.5, "L": 0.4}, one("O"), one("|"),
                   one("W"), one("O"), one("R"), {"D": 0.5, "L": 0.4}, one("D"), one("|")])
    target = [symbols.index(c) for c in "HELLO|WORLD|"]
    batch = {"id": torch.tensor([0]), "source": torch.zeros(1, 16000), "lengths": torch.tensor([16000]),
             "target": torch.tensor([target]), "target_lengths": torch.tensor([len(target)])}
    settings = EvalSettings(symbols=symbols, word_separator=4, keep_log_probs=True)
    result = run_ctc_evaluation(FixedLogits({0: near}), [batch], settings)
    assert result.utterances[0].hypothesis == "HELO WORD"
    lexicon = Lexicon.from_words(["HELLO", "WORLD", "HELP", "HOLD", "DOWER"], symbols)
    lm = NGramLM.estimate(["HELLO WORLD", "HOLD DOWER", "HELP"], order=2)
    decoder = CTCBeamSearchDecoder(lexicon, symbols, lm, BeamSearchConfig())
    greedy, seconds, audio_s = inference.beam_decode(result, decoder)
    assert result.utterances[0].hypothesis == "HELLO WORLD"
    assert result.utterances[0].pred_ids == target and result.utterances[0].log_probs is None
    assert greedy.utterances[0].hypothesis == "HELO WORD"
    assert result.summary()["eval_wer"] == 0.0 and result.summary()["eval_uer"] == 0.0
    assert greedy.summary()["eval_wer"] == 100.0
    assert seconds > 0 and audio_s == 1.0


# ----------------------------------------------------------------------------------------------- inference.py


NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0, final_dropout=0.0)


def tiny_ctc_with_lm(tmp, *, n_train: int, n_valid: int, seed: int, max_s: float, order: int,
                     blank_bias: float = 0.0) -> dict:
    """A synthetic corpus in ``tmp``, an untrained tiny CTC checkpoint on it (its blank logit raised by
    ``blank_bias``), and a lexicon + n-gram LM of the given ``order`` built from its word transcripts."""
    data = make_corpus(str(tmp / "corpus"), n_train=n_train, n_valid=n_valid, seed=seed, max_s=max_s)
    dictionary = Dictionary.load(os.path.join(data, "dict.ltr.txt"))
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny", **NO_DROP), len(dictionary))
    with torch.no_grad():
        model.w2v_encoder.proj.bias[0] += blank_bias
    ckpt = str(tmp / "ctc.pt")
    torch.save(model_checkpoint(model, labels=dictionary.to_text()), ckpt)
    lm_dir = str(tmp / "lm")
    wrds = [os.path.join(data, f"{s}.wrd") for s in ("train", "valid")]
    assert build_lm(["--text", *wrds, "--dict", os.path.join(data, "dict.ltr.txt"), "--out_dir", lm_dir,
                     "--order", str(order)]) == 0
    return {"tmp": tmp, "data": data, "ckpt": ckpt, "lexicon": os.path.join(lm_dir, "lexicon.txt"),
            "lm": os.path.join(lm_dir, "lm.arpa")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_ctc_with_lm(tmp_path_factory.mktemp("beam"), n_train=12, n_valid=6, seed=5, max_s=1.2, order=3,
                            blank_bias=0.5)


def _run(setup, name, *extra):
    out = setup["tmp"] / name
    preds = str(out / "p.tsv")
    rc = inference.main(["--w2v_path", setup["ckpt"], "--data", setup["data"], "--valid_subset", "valid",
                         "--output_dir", str(out), "--num_workers", "0", "--cpu", "--batch_size", "3",
                         "--save_predictions", preds, *extra])
    if rc != 0:
        return rc, None, None
    with open(preds, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    records = [r for r in read_dllogger_log(str(out / "nvlog_infer.json")) if r.get("step") == []]
    return rc, rows, records[-1]["data"]


def test_inference_beam_search_end_to_end(setup, capsys):
    _, greedy_rows, greedy_log = _run(setup, "greedy")
    capsys.readouterr()
    rc, rows, log = _run(setup, "beam", "--lexicon", setup["lexicon"], "--lm_path", setup["lm"], "--beam", "20",
                         "--lm_weight", "0.5", "--word_score", "1.0")
    assert rc == 0
    out, err = capsys.readouterr()
    printed = re.search(r"^WER: (\d+\.\d\d)%", out, re.M)
    assert printed and printed.group(1) == f"{log['eval_wer']:.2f}"
    assert "decoding: " in err and re.search(r"^Beam search \(python\): .* ms per second of audio", out, re.M)
    # greedy numbers are unchanged, logged next to the beam search's
    assert log["eval_wer_greedy"] == greedy_log["eval_wer"]
    assert log["eval_uer_greedy"] == greedy_log["eval_uer"]
    assert "eval_wer_greedy" not in greedy_log
    assert log["decode_time_s"] > 0 and log["decoder_rtf"] > 0
    assert f"WER (greedy decoding): {greedy_log['eval_wer']:.2f}%" in out
    # the logged WER is the WER of the saved hypotheses, which use lexicon words only
    lexicon_words = {line.split("\t")[0] for line in open(setup["lexicon"], encoding="utf-8")}
    from common.metrics import edit_distance
    errs = sum(edit_distance(r["hypothesis"].split(), r["reference"].split()) for r in rows)
    words = sum(len(r["reference"].split()) for r in rows)
    assert log["eval_wer"] == pytest.approx(100.0 * errs / words)
    assert all(set(r["hypothesis"].split()) <= lexicon_words for r in rows)
    assert [r["reference"] for r in rows] == [r["reference"] for r in greedy_rows]
    assert any(r["hypothesis"] for r in rows)
    # lexicon only, and the flashlight backend
    rc, rows_nolm, log_nolm = _run(setup, "beam_nolm", "--lexicon", setup["lexicon"], "--word_score", "1.0")
    assert rc == 0 and "eval_wer_greedy" in log_nolm
    assert all(set(r["hypothesis"].split()) <= lexicon_words for r in rows_nolm)
    if flashlight_available():
        rc, rows_fl, log_fl = _run(setup, "beam_fl", "--lexicon", setup["lexicon"], "--lm_path", setup["lm"],
                                   "--lm_weight", "0.5", "--word_score", "1.0", "--decoder_backend", "flashlight")
        assert rc == 0 and all(set(r["hypothesis"].split()) <= lexicon_words for r in rows_fl)


def test_inference_beam_search_errors(setup, capsys, tmp_path):
    def fails(*extra):
        rc, _, _ = _run(setup, "bad", *extra)
        assert rc == 2
        return capsys.readouterr().err

    assert "lexicon not found: /nope/lexicon.txt" in fails("--lexicon", "/nope/lexicon.txt")
    assert "language model not found: /nope/lm.arpa" in fails("--lexicon", setup["lexicon"], "--lm_path",
                                                              "/nope/lm.arpa")
    assert "--lm_path needs --lexicon" in fails("--lm_path", setup["lm"])
    bad_lex = tmp_path / "lexicon.txt"
    bad_lex.write_text("AB\tA B |\nQUIT\tQ U I T |\n")
    err = fails("--lexicon", str(bad_lex))
    assert f"{bad_lex}:2:" in err and "'QUIT'" in err and "'Q'" in err
    bad_lm = tmp_path / "lm.arpa"
    bad_lm.write_text(open(setup["lm"]).read().replace("\\end\\", ""))
    err = fails("--lexicon", setup["lexicon"], "--lm_path", str(bad_lm))
    assert str(bad_lm) in err and "no \\end\\" in err


@pytest.mark.slow
def test_inference_beam_search_ddp_matches_one_process(setup):
    """2 gloo processes: each rank decodes its shard; predictions and both WERs equal one process's."""
    import socket
    import subprocess
    import sys

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not installed next to the interpreter")
    flags = ["--lexicon", setup["lexicon"], "--lm_path", setup["lm"], "--word_score", "1.0"]
    _, single, log1 = _run(setup, "ddp_ref", *flags)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = setup["tmp"] / "ddp"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port),
                           os.path.join(root, "inference.py"), "--w2v_path", setup["ckpt"], "--data", setup["data"],
                           "--valid_subset", "valid", "--output_dir", str(out), "--num_workers", "0", "--cpu",
                           "--batch_size", "3", "--save_predictions", str(out / "p.tsv"), *flags],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root),
                          cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "p.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows == single
    log = [r for r in read_dllogger_log(str(out / "nvlog_infer.json")) if r.get("step") == []][-1]["data"]
    for key in ("eval_wer", "eval_uer", "eval_wer_greedy", "eval_uer_greedy", "eval_utterances"):
        assert log[key] == log1[key]
