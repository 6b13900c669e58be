"""common/ngram_lm.py: Kneser-Ney estimation (hand-computed values, normalisation), ARPA round trip and errors, KenLM
(through flashlight-text, when installed) as an independent oracle, and the ``python -m common.ngram_lm`` tool."""

from __future__ import annotations

import gzip
import math
import os
import random

import pytest

from common.ngram_lm import LN10, ARPAError, NGramLM, main, read_arpa_vocabulary


def p(lm, context, word):
    """p(word | context) as a probability; a context starting with <s> starts a sentence."""
    return math.exp(lm.score(lm.context_state(context), word)[1])


def random_corpus(seed, n=200, words="the cat dog sat on mat a big red".split()):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def contexts(sentences, order):
    out = {()}
    for s in sentences:
        toks = ["<s>"] + s.split()
        for i in range(len(toks)):
            for n in range(1, order):
                if i - n + 1 >= 0:
                    out.add(tuple(toks[i - n + 1:i + 1]))
    return sorted(out)


# ----------------------------------------------------------------------------------------------- estimation


def test_interpolated_kneser_ney_by_hand():
    """Bigram, one discount D = 0.5. Sentences <s> a b </s> | <s> a c </s> | <s> b c </s>.

    Unigram continuation counts (distinct left neighbours): a 1 {<s>}, b 2 {<s>, a}, c 2 {a, b}, </s> 2 {b, c};
    total 7; 4 words with a count -> gamma() = 0.5 * 4 / 7; uniform over {a, b, c, </s>, <unk>} (5 words).
    """
    lm = NGramLM.estimate(["a b", "a c", "b c"], order=2, discount=0.5)
    g0, u = 0.5 * 4 / 7, 1 / 5
    p_a, p_b, p_c, p_end, p_unk = 0.5 / 7 + g0 * u, 1.5 / 7 + g0 * u, 1.5 / 7 + g0 * u, 1.5 / 7 + g0 * u, g0 * u
    assert p(lm, (), "a") == pytest.approx(p_a, abs=1e-12)
    assert p(lm, (), "b") == pytest.approx(p_b, abs=1e-12)
    assert p(lm, (), "</s>") == pytest.approx(p_end, abs=1e-12)
    assert p(lm, (), "<unk>") == pytest.approx(p_unk, abs=1e-12)
    assert p(lm, (), "zebra") == pytest.approx(p_unk, abs=1e-12)  # unknown words are <unk>
    # context <s>: raw counts a 2, b 1 (denominator 3); gamma(<s>) = 0.5 * 2 / 3
    assert p(lm, ("<s>",), "a") == pytest.approx(1.5 / 3 + (1 / 3) * p_a, abs=1e-12)
    assert p(lm, ("<s>",), "b") == pytest.approx(0.5 / 3 + (1 / 3) * p_b, abs=1e-12)
    assert p(lm, ("<s>",), "c") == pytest.approx((1 / 3) * p_c, abs=1e-12)  # unseen: backoff
    # context a: b 1, c 1 (denominator 2); gamma(a) = 0.5 * 2 / 2
    assert p(lm, ("a",), "b") == pytest.approx(0.5 / 2 + 0.5 * p_b, abs=1e-12)
    assert p(lm, ("a",), "a") == pytest.approx(0.5 * p_a, abs=1e-12)
    # context c: only </s> follows (count 2): alpha = 1.5 / 2, gamma = 0.5 / 2
    assert p(lm, ("c",), "</s>") == pytest.approx(1.5 / 2 + 0.25 * p_end, abs=1e-12)
    # a whole sentence: p(a | <s>) p(b | a) p(</s> | b)
    p_end_b = 0.5 / 2 + 0.5 * p_end  # context b: </s> 1, c 1
    expected = math.log((1.5 / 3 + p_a / 3) * (0.25 + 0.5 * p_b) * p_end_b)
    assert lm.sentence_score(["a", "b"]) == pytest.approx(expected, abs=1e-12)


def test_modified_kneser_ney_discounts_by_hand():
    """Bigram counts with n1..n4 = 5, 2, 2, 2 give the three modified discounts; the unigram level (continuation
    counts 1,1,1,1,1,1 and 5: n2 = 0) falls back to one discount 0.5."""
    sents = ["x"] * 4 + ["y"] * 3 + ["z"] * 2 + ["w", "u v"]
    lm = NGramLM.estimate(sents, order=2)
    y = 5 / (5 + 2 * 2)
    d1, d2, d3 = 1 - 2 * y * 2 / 5, 2 - 3 * y * 2 / 2, 3 - 4 * y * 2 / 2
    assert lm.discounts[1] == pytest.approx((d1, d2, d3))
    assert lm.discounts[0] == (0.5, 0.5, 0.5)
    # unigram: continuation counts x y z w u v 1 each, </s> 5: total 11, 7 words, vocabulary of 8 (+<unk>, -<s>)
    p_x = 0.5 / 11 + (0.5 * 7 / 11) / 8
    assert p(lm, (), "x") == pytest.approx(p_x, abs=1e-12)
    # after <s>: x 4, y 3, z 2, w 1, u 1 (denominator 11); gamma = (2 D1 + 1 D2 + 2 D3+) / 11
    gamma = (2 * d1 + d2 + 2 * d3) / 11
    assert p(lm, ("<s>",), "x") == pytest.approx((4 - d3) / 11 + gamma * p_x, abs=1e-12)
    assert p(lm, ("<s>",), "w") == pytest.approx((1 - d1) / 11 + gamma * (0.5 / 11 + (0.5 * 7 / 11) / 8),
                                                 abs=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_probabilities_sum_to_one_in_every_context(order):
    sents = random_corpus(order, n=150)
    lm = NGramLM.estimate(sents, order=order)
    vocab = [w for w in lm.vocab if w != "<s>"]
    for ctx in contexts(sents, order) + [("dog", "zebra"), ("<s>", "zebra", "cat")]:
        state = lm.context_state(ctx)
        total = sum(math.exp(lm.score(state, w)[1]) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9), ctx


def test_estimate_rejects_bad_input():
    with pytest.raises(ValueError, match="no text"):
        NGramLM.estimate([], order=3)
    with pytest.raises(ValueError, match="reserved"):
        NGramLM.estimate(["a </s> b"], order=2)
    with pytest.raises(ValueError, match="order"):
        NGramLM.estimate(["a"], order=0)


# ----------------------------------------------------------------------------------------------- ARPA


@pytest.mark.parametrize("suffix", [".arpa", ".arpa.gz"])
def test_arpa_round_trip_gives_identical_scores(tmp_path, suffix):
    sents = random_corpus(7)
    lm = NGramLM.estimate(sents, order=4)
    path = str(tmp_path / f"lm{suffix}")
    lm.write_arpa(path)
    if suffix.endswith(".gz"):
        with open(path, "rb") as fh:
            assert fh.read(2) == b"\x1f\x8b"
    back = NGramLM.load_arpa(path)
    assert back.vocab == lm.vocab and back.counts() == lm.counts()
    for ctx in contexts(sents, 4):
        s1, s2 = lm.context_state(ctx), back.context_state(ctx)
        assert s1 == s2
        for w in lm.vocab[:]:
            assert back.score(s2, w) == lm.score(s1, w)  # bit-identical
    # float32 tables (what very large files use) still agree to float32 precision
    small = NGramLM.load_arpa(path, dtype="float32")
    for s in sents[:20]:
        assert small.sentence_score(s.split()) == pytest.approx(lm.sentence_score(s.split()), abs=1e-5)


ARPA = """\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.5
-0.7\t</s>
-0.6\ta\t-0.2
-0.8\tb\t-0.3

\\2-grams:
-0.4\t<s> a\t-0.1
-0.3\ta b\t-0.25
-0.2\tb </s>

\\3-grams:
-0.05\t<s> a b

\\end\\
"""


def test_backoff_scoring_of_a_hand_written_arpa(tmp_path):
    path = tmp_path / "hand.arpa"
    path.write_text("some header text\n" + ARPA)
    lm = NGramLM.load_arpa(str(path))
    L = LN10
    s = lm.start_state()
    s, lp = lm.score(s, "a")
    assert lp == pytest.approx(-0.4 * L)                       # <s> a
    s, lp = lm.score(s, "b")
    assert lp == pytest.approx(-0.05 * L)                      # <s> a b
    s2, lp = lm.score(s, "a")                                   # a b a: bow(a b) + bow(b) + p(a)
    assert lp == pytest.approx((-0.25 - 0.3 - 0.6) * L)
    assert lm.final_score(s) == pytest.approx((-0.2 - 0.25) * L)  # a b </s> missing: bow(a b) + p(</s> | b)
    _, lp = lm.score(lm.context_state(["<s>", "b"]), "a")      # context <s> b is no bigram: from context b
    assert lp == pytest.approx((-0.3 - 0.6) * L)
    assert lm.score(lm.start_state(), "zzz")[1] == pytest.approx((-0.5 - 1.0) * L)  # <unk>
    assert lm.sentence_score(["a", "b"]) == pytest.approx((-0.4 - 0.05 - 0.2 - 0.25) * L)
    assert read_arpa_vocabulary(str(path)) == [("<unk>", 8), ("<s>", 9), ("</s>", 10), ("a", 11), ("b", 12)]


def test_missing_unk_gets_a_floor(tmp_path, caplog):
    path = tmp_path / "nounk.arpa"
    path.write_text(ARPA.replace("ngram 1=5", "ngram 1=4").replace("-1.0\t<unk>\n", ""))
    lm = NGramLM.load_arpa(str(path))
    assert lm.score(lm.null_state(), "zzz")[1] == pytest.approx(-100 * LN10)
    assert "no <unk>" in caplog.text


@pytest.mark.parametrize("mutate, message, line", [
    (lambda t: t.replace("\\data\\", "\\dada\\"), "no \\\\data\\\\ header", None),
    (lambda t: t.replace("ngram 2=3", "ngram 2=x"), "bad count line", 3),
    (lambda t: t.replace("-0.3\ta b\t-0.25", "-0.3\ta b\t-0.25\textra"), "a 2-gram line needs", 15),
    (lambda t: t.replace("-0.6\ta\t-0.2", "minus\ta\t-0.2"), "bad log10 probability 'minus'", 10),
    (lambda t: t.replace("-0.6\ta\t-0.2", "0.6\ta\t-0.2"), "must be <= 0", 10),
    (lambda t: t.replace("-0.3\ta b\t-0.25", "-0.3\ta b\tnan"), "non-finite backoff", 15),
    (lambda t: t.replace("-0.3\ta b", "-0.3\ta q"), "word 'q' of a 2-gram is not among the 1-grams", 15),
    (lambda t: t.replace("-0.05\t<s> a b", "-0.05\tb a b"), "prefix of order 2 is not among", 19),
    (lambda t: t.replace("ngram 2=3", "ngram 2=4"), "has 3 entries but the header says 4", None),
    (lambda t: t.replace("-0.2\tb </s>", "-0.2\ta b"), "duplicate 2-gram", 16),
    (lambda t: t.replace("-0.8\tb\t-0.3", "-0.8\ta\t-0.3"), "duplicate 1-gram 'a'", 11),
    (lambda t: t.replace("\\end\\\n", ""), "no \\\\end\\\\", None),
    (lambda t: t.replace("\\3-grams:", "\\4-grams:"), "expected the section header \\\\3-grams:", 18),
    (lambda t: t.replace("-0.05\t<s> a b\n", "-0.05\t<s> a b\t-0.1\n"), "a 3-gram line needs", 19),
])
def test_malformed_arpa_names_file_and_line(tmp_path, mutate, message, line):
    path = tmp_path / "bad.arpa"
    path.write_text(mutate(ARPA))
    with pytest.raises(ARPAError, match=message) as info:
        NGramLM.load_arpa(str(path))
    assert str(path) in str(info.value)
    if line is not None:
        assert f"{path}:{line}:" in str(info.value)


def test_arpa_without_sentence_markers_and_missing_files(tmp_path):
    path = tmp_path / "nos.arpa"
    path.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-0.1\ta\n\n\\end\\\n")
    with pytest.raises(ARPAError, match="no <s>"):
        NGramLM.load_arpa(str(path))
    with pytest.raises(FileNotFoundError, match="language model not found"):
        NGramLM.load_arpa(str(tmp_path / "missing.arpa"))
    binary = tmp_path / "kenlm.bin"
    binary.write_bytes(b"mmap lm \xff\xfe\x00\x01" * 10)
    with pytest.raises(ARPAError, match="UTF-8|data"):
        NGramLM.load_arpa(str(binary))


def test_kenlm_reads_our_arpa_with_the_same_scores(tmp_path):
    """KenLM (flashlight-text's build) is an independent implementation of ARPA backoff scoring."""
    pytest.importorskip("flashlight.lib.text.decoder")
    kenlm_mod = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    from flashlight.lib.text.dictionary import Dictionary as FlDictionary

    sents = random_corpus(3)
    words = sorted({w for s in sents for w in s.split()}) + ["<unk>"]
    for order in (2, 3, 4):
        lm = NGramLM.estimate(sents, order=order)
        path = str(tmp_path / f"o{order}.arpa")
        lm.write_arpa(path)
        ken = kenlm_mod.KenLM(path, FlDictionary(words))
        test = sents[:60] + ["cat cat cat dog the the a red big mat", "mat", "a a a a a a"]
        for s in test:
            k_state, ours = ken.start(False), lm.start_state()
            for w in s.split():
                k_state, k_score = ken.score(k_state, words.index(w))
                ours, lp = lm.score(ours, w)
                assert k_score == pytest.approx(lp / LN10, abs=1e-5)
            _, k_end = ken.finish(k_state)
            assert k_end == pytest.approx(lm.final_score(ours) / LN10, abs=1e-5)


# ----------------------------------------------------------------------------------------------- the tool


LETTERS = ["|", "E", "T", "A", "O", "N", "'"]


def _dict(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text("".join(f"{c} {10 - i}\n" for i, c in enumerate(LETTERS)))
    return str(path)


def test_cli_builds_lm_and_lexicon_from_wrd(tmp_path, capsys):
    wrd = tmp_path / "train.wrd"
    wrd.write_text("NOT A TEA\nTO EAT\n\nA NOTE TO ANNE'T\n")
    out = tmp_path / "lm"
    assert main(["--text", str(wrd), "--dict", _dict(tmp_path), "--out_dir", str(out), "--order", "3"]) == 0
    lexicon = (out / "lexicon.txt").read_text().splitlines()
    assert lexicon == ["A\tA |", "ANNE'T\tA N N E ' T |", "EAT\tE A T |", "NOT\tN O T |", "NOTE\tN O T E |",
                       "TEA\tT E A |", "TO\tT O |"]
    lm = NGramLM.load_arpa(str(out / "lm.arpa"))
    assert lm.order == 3 and set(lm.vocab) == {"<unk>", "<s>", "</s>", "A", "ANNE'T", "EAT", "NOT", "NOTE",
                                               "TEA", "TO"}
    ref = NGramLM.estimate(["NOT A TEA", "TO EAT", "A NOTE TO ANNE'T"], order=3)
    assert lm.sentence_score(["TO", "EAT"]) == ref.sentence_score(["TO", "EAT"])
    assert "lm.arpa: order 3" in capsys.readouterr().out


def test_cli_reads_trans_txt_directories_and_gzip(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "train-clean-100" / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 NOT A TEA\n19-198-0001 TO EAT\n")
    gz = tmp_path / "more.txt.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write("a note\n")
    out = tmp_path / "lm"
    assert main(["--text", str(tmp_path / "LibriSpeech"), str(gz), "--uppercase", "--dict", _dict(tmp_path),
                 "--out_dir", str(out), "--order", "2"]) == 0
    words = [line.split("\t")[0] for line in (out / "lexicon.txt").read_text().splitlines()]
    assert words == ["A", "EAT", "NOT", "NOTE", "TEA", "TO"]  # no utterance ids


def test_cli_names_the_word_file_and_line_of_a_bad_letter(tmp_path, capsys):
    wrd = tmp_path / "train.wrd"
    wrd.write_text("NOT A TEA\nTO EAT\nA NOTE TO XENA\n")
    rc = main(["--text", str(wrd), "--dict", _dict(tmp_path), "--out_dir", str(tmp_path / "lm")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{wrd}:3: word 'XENA'" in err and "'X'" in err and "dict.ltr.txt" in err
    assert not (tmp_path / "lm").exists()  # nothing half-made is left behind
    # --skip_invalid leaves it out
    assert main(["--text", str(wrd), "--dict", _dict(tmp_path), "--out_dir", str(tmp_path / "lm"),
                 "--skip_invalid"]) == 0
    assert "XENA" not in (tmp_path / "lm" / "lexicon.txt").read_text()
    assert "XENA" in (tmp_path / "lm" / "lm.arpa").read_text()  # the LM keeps every word


def test_cli_lexicon_from_arpa_vocabulary(tmp_path, capsys):
    arpa = tmp_path / "4-gram.arpa"
    lm = NGramLM.estimate(["NOT A TEA", "TO EAT"], order=2)
    lm.write_arpa(str(arpa))
    out = tmp_path / "lex"
    assert main(["--from_arpa", str(arpa), "--dict", _dict(tmp_path), "--out_dir", str(out)]) == 0
    assert (out / "lexicon.txt").read_text().splitlines() == ["A\tA |", "EAT\tE A T |", "NOT\tN O T |",
                                                            "TEA\tT E A |", "TO\tT O |"]
    assert not os.path.exists(out / "lm.arpa")
    bad = tmp_path / "bad.arpa"
    NGramLM.estimate(["NOT A ZOO"], order=2).write_arpa(str(bad))
    assert main(["--from_arpa", str(bad), "--dict", _dict(tmp_path), "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "word 'ZOO'" in err
    assert main(["--from_arpa", str(bad), "--out_dir", str(out)]) == 2
    assert "--dict" in capsys.readouterr().err


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_lm_files_that_are_not_utf8_name_file_line_and_column(tmp_path, gz):
    """A Latin-1 ARPA file, transcript or lexicon: one error with the file and line of the first bad byte (Python's
    decoder names neither; the column too for text the user converts), for the LM reader, the vocabulary reader, the
    LM builder and the lexicon."""
    from common.ctc_decoder import Lexicon
    from common.data.errors import DataError

    lm = NGramLM.estimate([["A", "B"], ["B", "A", "A"]], order=2)
    good = str(tmp_path / "good.arpa")
    lm.write_arpa(good)
    text = open(good, encoding="utf-8").read().replace("\\1-grams:\n", "\\1-grams:\n-1.0\tCAF\xe9\n", 1)
    lines_before = text[:text.index("CAF")].count("\n") + 1
    path = str(tmp_path / ("bad.arpa.gz" if gz else "bad.arpa"))
    data = text.encode("latin-1")
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as fh:
        fh.write(data)
    where = rf"bad\.arpa(\.gz)?:{lines_before}: not a UTF-8 text ARPA file \(byte 0xe9\)"
    with pytest.raises(ARPAError, match=where):
        NGramLM.load_arpa(path)
    with pytest.raises(ARPAError, match=where):
        read_arpa_vocabulary(path)
    trans = tmp_path / "train.wrd"
    trans.write_bytes("A B\nCAF\xe9 A\n".encode("latin-1"))
    assert main(["--text", str(trans), "--order", "2", "--out_dir", str(tmp_path / "lm")]) == 2
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_bytes("A\tA |\nCAF\xe9\tC A F |\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"lexicon\.txt:2: not UTF-8 text \(byte 0xe9 at column 4\)"):
        Lexicon.load(str(lexicon), ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "C", "F"])


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1 << 20])
def test_the_first_bad_byte_is_found_in_chunks(tmp_path, chunk_size):
    """The scan that names a non-UTF-8 byte reads in chunks (a large LM corpus must not be read whole): multi-byte
    characters split by a chunk boundary are not errors, and line and column are those of the whole file (oracle:
    Python's decoder on the whole file)."""
    from common.ngram_lm import first_non_utf8

    text = "é\nçà b\nab".encode("utf-8") + b"c\xe9d\n" + "ü\n".encode("utf-8")
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    with pytest.raises(UnicodeDecodeError) as whole:
        text.decode("utf-8")
    pos = whole.value.start
    expected = (text.count(b"\n", 0, pos) + 1, pos - text.rfind(b"\n", 0, pos), text[pos])
    assert expected == (3, 4, 0xE9)
    assert first_non_utf8(str(path), chunk_size=chunk_size) == expected
    good = tmp_path / "good.txt"
    good.write_bytes("é\nçà\n".encode("utf-8"))
    assert first_non_utf8(str(good), chunk_size=chunk_size) is None
