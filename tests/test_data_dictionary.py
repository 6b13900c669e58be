"""Dictionary: fairseq index layout, file format, encoding/decoding (hand-computed cases)."""
import pytest
import torch

from common.data.dictionary import Dictionary
from common.data.errors import DataError

# LibriSpeech letter dictionary as generated from train-960 (order = frequency); counts are illustrative.
LIBRISPEECH_SYMBOLS = ["|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C", "F", "G",
                       "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]


def librispeech_text():
    return "".join(f"{s} {1000 - i}\n" for i, s in enumerate(LIBRISPEECH_SYMBOLS))


def test_librispeech_worked_numbers(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text(librispeech_text())
    d = Dictionary.load(path)
    assert len(LIBRISPEECH_SYMBOLS) == 28
    assert len(d) == 32
    assert (d.blank, d.bos, d.pad, d.eos, d.unk) == (0, 0, 1, 2, 3)
    assert d.index("|") == 4 and d.index("E") == 5 and d.index("Z") == 31
    assert d[0] == "<s>" and d[1] == "<pad>" and d[2] == "</s>" and d[3] == "<unk>"


def test_encode_line_and_string():
    d = Dictionary.from_text(librispeech_text())
    # A=7, N=9, D=14, |=4 (positions 3, 5, 10, 0 in the symbol list, plus 4 specials)
    ids = d.encode_line("A N D | A |")
    assert ids.dtype == torch.int32
    assert ids.tolist() == [7, 9, 14, 4, 7, 4]
    assert d.encode_line("  A   N\tD |  ").tolist() == [7, 9, 14, 4]  # whitespace runs collapse
    # bos/eos dropped, pad kept as its symbol, out-of-range -> <unk>
    assert d.string([0, 7, 2, 9, 1, 99]) == "A N <pad> <unk>"
    assert d.string(torch.tensor([5, 4, 5])) == "E | E"


def test_unknown_symbol_error_names_file_and_line():
    d = Dictionary.from_text(librispeech_text())
    with pytest.raises(DataError, match=r"'@'.*train\.ltr:17"):
        d.encode_line("A @ |", source="/data/train.ltr", line_no=17)
    assert d.encode_line("A @ |", on_unknown="unk").tolist() == [7, 3, 4]


def test_symbol_split_at_last_space_and_overwrite():
    d = Dictionary.from_text("a b 3\nE 5\nE 7 #fairseq:overwrite\n<unk> 1 #fairseq:overwrite\n")
    assert d.symbols[4:] == ["a b", "E", "E", "<unk>"]
    assert d.index("a b") == 4
    assert d.index("E") == 6  # the overwrite appends a new slot and lookups follow it
    assert d.index("<unk>") == 7
    assert len(d) == 8


def test_duplicate_and_malformed_lines_name_file_and_line(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text("E 5\nT 4\nE 3\n")
    with pytest.raises(DataError, match=r"duplicate symbol 'E'.*dict\.ltr\.txt:3"):
        Dictionary.load(path)
    with pytest.raises(DataError, match=r"duplicate symbol '<s>'.*<text>:1"):
        Dictionary.from_text("<s> 5\n")
    path.write_text("E 5\nT\n")
    with pytest.raises(DataError, match=r"incorrect dictionary format.*dict\.ltr\.txt:2"):
        Dictionary.load(path)
    path.write_text("E 5\nT x\n")
    with pytest.raises(DataError, match=r"dict\.ltr\.txt:2.*not an integer"):
        Dictionary.load(path)
    with pytest.raises(DataError, match=r"ckpt:2"):
        Dictionary.from_text("E 5\n\n", source="ckpt")


def test_text_round_trip():
    text = "| 10\nE 9\nE 8 #fairseq:overwrite\n"
    d = Dictionary.from_text(text)
    assert d.to_text() == text
    d2 = Dictionary.from_text(d.to_text())
    assert d2.symbols == d.symbols and d2.indices == d.indices
    assert Dictionary.from_symbols(["|", "E"]).indices["E"] == 5
