"""Your own data, not LibriSpeech: a flat folder of WAV/FLAC files at any rate (stereo too), a ``file|transcript``
table in another language, and the path from there to labels, a dictionary, CTC targets, decoded text and WER.
Every oracle below is written out by hand."""

from __future__ import annotations

import math
import re
import unicodedata

import numpy as np
import pytest
import soundfile as sf

from common.data.dictionary import Dictionary
from common.evaluation import decode_text
from common.metrics import word_error_rate
from utils import convert_to_wav, generate_dictionary, generate_filelist, text_labels
from utils.common import DataToolError

NFD = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731


def _sine(n, sr, freq=440.0, amp=0.5):
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)


def test_convert_to_wav_resamples_and_downmixes_a_flat_folder_of_wav_and_flac(tmp_path):
    src, dst = tmp_path / "raw", tmp_path / "16k"
    src.mkdir()
    sf.write(str(src / "a.wav"), _sine(2205, 22050), 22050, subtype="PCM_16")           # espeak-ng's rate
    stereo = np.stack([_sine(4410, 44100, amp=0.5), _sine(4410, 44100, amp=0.3)], axis=1)
    sf.write(str(src / "b c é.WAV"), stereo, 44100, subtype="PCM_16")                    # 44.1 kHz stereo
    sf.write(str(src / "d.flac"), _sine(1600, 16000), 16000)
    assert convert_to_wav.main(["--input_dir", str(src), "--dest_dir", str(dst), "--target_sr", "16000",
                                "--jobs", "1"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["a.wav", "b c é.wav", "d.wav"]
    for name, amp in (("a.wav", 0.5), ("b c é.wav", 0.4), ("d.wav", 0.5)):  # 0.4 = (0.5 + 0.3) / 2
        x, sr = sf.read(str(dst / name), dtype="float64", always_2d=True)
        # 0.1 s at any rate -> 1600 samples at 16 kHz, one channel
        assert (sr, x.shape) == (16000, (1600, 1)), name
        mid = x[400:1200, 0]  # 800 samples = 22 whole periods of 440 Hz at 16 kHz, away from the edges
        assert math.isclose(np.sqrt(np.mean(mid ** 2)), amp / math.sqrt(2), rel_tol=0.01), name
    # a second run keeps what is there; an output at the wrong rate (an earlier run without --target_sr) is redone
    sf.write(str(dst / "a.wav"), _sine(2205, 22050), 22050, subtype="PCM_16")
    jobs, skipped = convert_to_wav.plan_jobs(str(src), str(dst), ["wav", "flac"], 16000, False)
    assert [j[1] for j in jobs] == [str(dst / "a.wav")] and skipped == 2


def test_convert_to_wav_refuses_colliding_outputs_and_its_own_input(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    sf.write(str(src / "a.wav"), _sine(800, 16000), 16000)
    with pytest.raises(DataToolError, match="is the input directory"):
        convert_to_wav.plan_jobs(str(src), str(src), ["wav"], 16000, False)
    sf.write(str(src / "a.flac"), _sine(800, 16000), 16000)
    with pytest.raises(DataToolError, match=r"a\.flac and .*a\.wav would both become .*a\.wav"):
        convert_to_wav.plan_jobs(str(src), str(tmp_path / "out"), ["wav", "flac"], 16000, False)


def test_generate_filelist_counts_audio_files_of_another_extension(tmp_path, capsys):
    sf.write(str(tmp_path / "a.wav"), _sine(800, 16000), 16000)
    sf.write(str(tmp_path / "b.flac"), _sine(800, 16000), 16000)
    assert generate_filelist.main([str(tmp_path), str(tmp_path / "x.tsv"), "--extension", "wav", "--quiet"]) == 0
    assert (tmp_path / "x.tsv").read_text() == f"{tmp_path}\na.wav\t800\n"
    assert "not listed: 1 .flac file(s)" in capsys.readouterr().err


@pytest.fixture
def table(tmp_path):
    """A manifest of 3 entries (no audio needed) and a transcript table written as a user would: a byte-order
    mark, NFD text and file names, another extension, typographic apostrophes, punctuation, a hyphen, ß, a letter
    with a combining mark that has no precomposed form (q̃)."""
    (tmp_path / "x.tsv").write_text(f"{tmp_path}\nsub/élève 1.wav\t16000\nx.wav\t16000\nz.wav\t16000\n",
                                    encoding="utf-8")
    (tmp_path / "t.csv").write_text(
        "\ufeffx.WAV|Straße\u00a0und Öl q\u0303.\n"
        "\n"
        + NFD("sub/élève 1.flac|L’élève  a mangé «trois» crêpes, avant-hier !") + "\n"
        "z.wav|Il a 10 ans\n", encoding="utf-8")
    return tmp_path


def test_text_labels_normalises_unicode_case_and_punctuation(table):
    wrd, ltr, unused = text_labels.make_labels(str(table / "x.tsv"), str(table / "t.csv"), digits="keep")
    assert wrd == ["L'ÉLÈVE A MANGÉ TROIS CRÊPES AVANT HIER", "STRAßE UND ÖL Q\u0303", "IL A 10 ANS"]
    assert ltr == ["L ' É L È V E | A | M A N G É | T R O I S | C R Ê P E S | A V A N T | H I E R |",
                   "S T R A ß E | U N D | Ö L | Q\u0303 |",
                   "I L | A | 1 0 | A N S |"]
    assert all(unicodedata.is_normalized("NFC", line) for line in wrd + ltr) and unused == 0
    wrd, _, _ = text_labels.make_labels(str(table / "x.tsv"), str(table / "t.csv"), case="lower", digits="keep")
    assert wrd[:2] == ["l'élève a mangé trois crêpes avant hier", "straße und öl q\u0303"]


def test_text_labels_errors_name_the_line(table, capsys):
    with pytest.raises(DataToolError, match=r"t\.csv:4: digit '1' .*--digits keep"):
        text_labels.make_labels(str(table / "x.tsv"), str(table / "t.csv"))
    (table / "t.csv").write_text("x.wav|Öl\n", encoding="utf-8")
    with pytest.raises(DataToolError, match=r"2 of 3 manifest entries have no transcript .*sub/élève 1\.wav "
                                            r"\(.*x\.tsv:2\), z\.wav \(.*x\.tsv:4\)"):
        text_labels.make_labels(str(table / "x.tsv"), str(table / "t.csv"))
    (table / "t.csv").write_text("sub/élève 1.wav|?!\nx.wav|Öl\nz.wav|a\n", encoding="utf-8")
    with pytest.raises(DataToolError, match=r"t\.csv:1: transcript is empty"):
        text_labels.make_labels(str(table / "x.tsv"), str(table / "t.csv"))


def test_generate_dictionary_counts_the_tokens_training_looks_up(tmp_path):
    # "Q̃" has no precomposed form: one token of two code points; a tab also separates tokens for training
    (tmp_path / "x.ltr").write_text("Q\u0303 A |\nA\tB |\n", encoding="utf-8")
    assert generate_dictionary.main([str(tmp_path / "x.ltr"), str(tmp_path / "dict.ltr.txt")]) == 0
    assert (tmp_path / "dict.ltr.txt").read_text(encoding="utf-8") == "A 2\n| 2\nB 1\nQ\u0303 1\n"
    d = Dictionary.load(tmp_path / "dict.ltr.txt")
    assert [d.encode_line(line).tolist() for line in ("Q\u0303 A |", "A\tB |")] == [[7, 4, 5], [4, 6, 5]]
    # several label files add their counts (a letter only the test transcripts hold still gets an output)
    (tmp_path / "test.ltr").write_text("Ÿ A |\n", encoding="utf-8")
    assert generate_dictionary.main([str(tmp_path / "x.ltr"), str(tmp_path / "test.ltr"), str(tmp_path / "d2")]) == 0
    assert (tmp_path / "d2").read_text(encoding="utf-8") == "A 3\n| 3\nB 1\nQ\u0303 1\nŸ 1\n"


def test_unicode_letters_and_separator_survive_to_wer_with_a_bom_dictionary(tmp_path):
    # labels -> dictionary (saved by Notepad: a byte-order mark) -> CTC target ids -> decoded text -> WER
    (tmp_path / "dict.ltr.txt").write_bytes("\ufeff| 5\nÉ 3\nL 2\nÈ 1\nV 1\nE 1\nA 1\n".encode("utf-8"))
    d = Dictionary.load(tmp_path / "dict.ltr.txt")
    assert d.symbols[4:] == ["|", "É", "L", "È", "V", "E", "A"]
    ref_ids = d.encode_line("É L È V E | A |").tolist()
    assert ref_ids == [5, 6, 7, 8, 9, 4, 10, 4]
    sep = d.index("|")
    ref = " ".join(decode_text(ref_ids, d.symbols, sep).split())
    hyp_ids = [5, 6, 9, 8, 9, 4, 10, 4]  # È -> E in the first word
    hyp = " ".join(decode_text(hyp_ids, d.symbols, sep).split())
    assert (ref, hyp) == ("ÉLÈVE A", "ÉLEVE A")
    assert word_error_rate([hyp], [ref]) == (0.5, 1, 2)  # 1 substituted word of 2


def test_a_byte_order_mark_is_not_part_of_a_filelist_root_or_the_first_label(tmp_path):
    # Notepad / Excel save UTF-8 with a byte-order mark; it must not glue itself to the audio root or to a letter
    from common.data.manifest import load_labels, load_manifest

    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "l.tsv").write_bytes(f"\ufeff{tmp_path}\na.wav\t16000\n".encode("utf-8"))
    (tmp_path / "l.ltr").write_bytes("\ufeffÉ L È V E |\n".encode("utf-8"))
    manifest = load_manifest(tmp_path / "l.tsv")
    assert str(manifest.root) == str(tmp_path)
    assert load_labels(tmp_path / "l.ltr", manifest).lines[0] == "É L È V E |"


def test_convert_to_wav_into_a_folder_inside_its_input_does_not_convert_its_own_outputs(tmp_path):
    """A rerun (say, after an interruption) with --dest_dir inside --input_dir found the WAV outputs of the first
    run among the inputs and converted them again one level deeper, a new level each run."""
    src = tmp_path / "raw"
    (src / "spk").mkdir(parents=True)
    sf.write(str(src / "spk" / "a.wav"), _sine(2205, 22050), 22050, subtype="PCM_16")
    (src / "spk" / "spk.trans.txt").write_text("a HELLO\n")
    dst = src / "wav16"
    for _ in range(2):
        assert convert_to_wav.main(["--input_dir", str(src), "--dest_dir", str(dst), "--target_sr", "16000",
                                    "--jobs", "1"]) == 0
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) == [
        "spk/a.wav", "spk/spk.trans.txt", "wav16/spk/a.wav", "wav16/spk/spk.trans.txt"]
    jobs, skipped = convert_to_wav.plan_jobs(str(src), str(dst), ["wav", "flac"], 16000, False)
    assert (jobs, skipped) == ([], 1)


def test_text_labels_refuses_a_table_with_more_columns_and_keeps_the_dots_of_a_key_without_extension(tmp_path):
    """LJSpeech's metadata ('id|text|normalised text') was split at the first '|' and the two text columns joined
    into one doubled transcript, silently; a key without extension lost its name after a dot ('spk1.take2' ->
    'spk1'), so two takes collided ('already has a transcript')."""
    (tmp_path / "m.tsv").write_text(f"{tmp_path}\nLJ001-0001.wav\t16000\nspk1.take2.wav\t16000\n"
                                    "spk1.take3.wav\t16000\n", encoding="utf-8")
    (tmp_path / "t.csv").write_text("LJ001-0001|Printing, in|Printing in\nspk1.take2|a\nspk1.take3|b\n",
                                    encoding="utf-8")
    with pytest.raises(DataToolError, match=r"t\.csv:1: 3 '\|'-separated fields, expected 2"):
        text_labels.make_labels(str(tmp_path / "m.tsv"), str(tmp_path / "t.csv"))
    (tmp_path / "t.csv").write_text("LJ001-0001|Printing, in\nspk1.take2|a\nspk1.take3|b\n", encoding="utf-8")
    wrd, _, unused = text_labels.make_labels(str(tmp_path / "m.tsv"), str(tmp_path / "t.csv"))
    assert (wrd, unused) == (["PRINTING IN", "A", "B"], 0)
    # an audio extension of any case is still ignored; a comma delimiter may occur in the transcript
    (tmp_path / "t.csv").write_text("LJ001-0001.FLAC,Printing, in\nspk1.take2.wav,a\nspk1.take3,b\n", encoding="utf-8")
    wrd, _, _ = text_labels.make_labels(str(tmp_path / "m.tsv"), str(tmp_path / "t.csv"), delimiter=",")
    assert wrd == ["PRINTING IN", "A", "B"]


def test_the_lexicon_spells_words_in_the_letter_tokens_of_the_labels():
    """A letter written with a combining mark that has no precomposed form (Q + U+0303, Devanagari KA + vowel sign
    I) is one token in the .ltr labels, so one dictionary symbol: the beam search's lexicon must spell it the same
    way (it split it into characters and refused the word). A dictionary that counted characters still works."""
    from common.ctc_decoder import LexiconError, letter_spelling

    q, ki = "Q\u0303", "\u0915\u093f"
    specials = ["<s>", "<pad>", "</s>", "<unk>", "|"]
    assert text_labels.words_to_letters(f"{q}A {ki}") == f"{q} A | {ki} |"
    assert letter_spelling(f"{q}A", specials + [q, "A"]) == [q, "A"]
    assert letter_spelling(ki, specials + [ki]) == [ki]
    assert letter_spelling(f"{q}A", specials + ["Q", "\u0303", "A"]) == ["Q", "\u0303", "A"]
    with pytest.raises(LexiconError, match=re.escape(repr(q))):
        letter_spelling(f"{q}A", specials + ["Q", "A"])
