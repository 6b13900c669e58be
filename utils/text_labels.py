"""Write word (.wrd) and letter (.ltr) label files for a manifest from your own transcript table.

Usage::

    python -m utils.text_labels TSV --transcripts FILE --output-dir D --output-name NAME
        [--delimiter '|'] [--case upper|lower|keep] [--keep-chars "'"] [--digits error|keep]

``FILE`` is UTF-8 text with one ``<audio file><DELIMITER><transcript>`` line per utterance (default delimiter
``|``, split at its first occurrence; a ``|`` or tab delimiter may occur only once per line, so a table with
more columns, such as LJSpeech's ``id|text|normalised text``, is an error; blank lines are skipped), e.g. ``élève 005.wav|L'élève a mangé.``. A line
is matched to the manifest entry with the same path relative to the manifest's root, or else the same file name,
ignoring the extension and Unicode normalisation (so ``x.flac`` or ``x.WAV`` in the table still names the
``x.wav`` that ``utils.convert_to_wav`` made). Every manifest entry needs a transcript (an error names the first
few that have none, with their manifest lines); table lines that match no entry are counted in a warning.

Each transcript is normalised, in this order (the same rules for every split, so references and hypotheses
compare):

1. Unicode NFC (an ``é`` typed as ``e`` + combining accent becomes one letter); typographic apostrophes
   ``’ ‘ ʼ ` ´`` become ``'``.
2. Case: ``--case upper`` (default, as LibriSpeech; a letter whose upper case is several letters, such as ``ß``,
   is kept as it is), ``lower`` or ``keep``.
3. Punctuation and symbols (Unicode categories P and S) become spaces, except the characters of ``--keep-chars``
   (default ``'``) inside a word: ``l'école`` keeps its apostrophe, ``'bonjour'`` loses its quotes, ``avant-hier``
   becomes two words. ``|`` (the word separator of ``.ltr`` files) can never be kept.
4. Digits (category N): an error naming the table line by default, because the audio says the number in words
   and no letter sequence ``1 0`` can be learnt from "dix"; write them as words, or ``--digits keep`` to keep
   them as letters.
5. Whitespace runs (any Unicode space) become one space. An empty result, or a control or other unexpected
   character, is an error naming the table line.

Writes, in manifest order, ``D/NAME.wrd`` (the normalised words) and ``D/NAME.ltr`` (one token per letter,
``|`` after every word: ``L ' É L È V E | A |``); a letter followed by combining marks stays one token. Then
``python -m utils.generate_dictionary D/NAME.ltr D/dict.ltr.txt`` on the training split gives the dictionary.
"""
from __future__ import annotations

import argparse
import os
import sys
import unicodedata
from collections import Counter
from typing import Dict, List, Optional, Set, Tuple

from common.data.letters import letter_tokens
from common.progress import Progress, format_duration

from .common import DataToolError, read_lines, read_manifest, run_main, write_lines
from .generate_filelist import AUDIO_EXTENSIONS

APOSTROPHES = "\u2019\u2018\u02bc`\u00b4"
NAMED = 5


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _upper(text: str) -> str:
    return "".join(c.upper() if len(c.upper()) == 1 else c for c in text)


def normalize_transcript(text: str, case: str = "upper", keep_chars: str = "'", digits: str = "error",
                         where: str = "<text>") -> str:
    """The normalised words of ``text`` joined by single spaces (see the module docstring for the rules)."""
    text = _nfc(text)
    for a in APOSTROPHES:
        text = text.replace(a, "'")
    if case == "upper":
        text = _upper(text)
    elif case == "lower":
        text = text.lower()
    elif case != "keep":
        raise ValueError(f"case must be upper, lower or keep, not {case!r}")
    chars = []
    for c in text:
        cat = unicodedata.category(c)
        if c.isspace() or (cat[0] in "PS" and c not in keep_chars):
            chars.append(" ")
        elif cat[0] == "N":
            if digits != "keep":
                raise DataToolError(f"{where}: digit {c!r} in transcript {text.strip()!r}: the audio says the "
                                    "number in words, so write it as words (or pass --digits keep)")
            chars.append(c)
        elif cat[0] in "LM" or c in keep_chars:
            chars.append(c)
        else:
            raise DataToolError(f"{where}: unexpected character U+{ord(c):04X} ({unicodedata.name(c, '?')}, "
                                f"category {cat}) in transcript {text.strip()!r}")
    words = []
    for word in "".join(chars).split():
        word = word.strip(keep_chars)  # kept characters only inside words
        if word:
            words.append(word)
    out = " ".join(words)
    if not out:
        raise DataToolError(f"{where}: transcript is empty after normalisation ({text.strip()!r})")
    return out


def words_to_letters(words: str) -> str:
    """``"L'ÉLÈVE A"`` -> ``"L ' É L È V E | A |"``."""
    return " ".join(" ".join(letter_tokens(w)) + " |" for w in words.split())


def _stem(path: str, extensions: Optional[Set[str]] = None) -> str:
    """``path`` normalised, without its extension; with ``extensions`` (lower case, no dot) only one of those is
    removed, so that a table key without an extension keeps the dots of its name (``spk1.take2``)."""
    path = _nfc(path.strip().replace("\\", "/"))
    while path.startswith("./"):
        path = path[2:]
    stem, ext = os.path.splitext(path)
    return stem if extensions is None or ext[1:].lower() in extensions else path


def read_table(path: str, delimiter: str) -> List[Tuple[str, str, int]]:
    """``(key, transcript, line number)`` per non-blank line of the transcript table."""
    if not os.path.isfile(path):
        raise DataToolError(f"transcript file {path} does not exist")
    rows = []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        key, sep, text = line.partition(delimiter)
        if not sep or not key.strip():
            raise DataToolError(f"{path}:{lineno}: expected '<audio file>{delimiter}<transcript>', got {line!r}")
        if delimiter in ("|", "\t") and delimiter in text:  # (never text: a table with more columns)
            raise DataToolError(f"{path}:{lineno}: {text.count(delimiter) + 2} {delimiter!r}-separated fields, "
                                f"expected 2 ('<audio file>{delimiter}<transcript>'; a table with more columns, such "
                                f"as LJSpeech's 'id|text|normalised text', would join them into one transcript): "
                                f"keep the audio file and one transcript column")
        rows.append((key.strip(), text, lineno))
    if not rows:
        raise DataToolError(f"{path}: no transcripts")
    return rows


def match(manifest_rel: List[str], rows: List[Tuple[str, str, int]], table: str) -> Tuple[List[int], int]:
    """For each manifest entry, the index of its row in ``rows``; and the number of rows left unused."""
    by_path: Dict[str, int] = {}
    by_name: Dict[str, List[int]] = {}
    extensions = set(AUDIO_EXTENSIONS) | {os.path.splitext(rel)[1][1:].lower() for rel in manifest_rel}
    for i, (key, _, lineno) in enumerate(rows):
        stem = _stem(key, extensions)
        if stem in by_path:
            raise DataToolError(f"{table}:{lineno}: {key!r} already has a transcript at line "
                                f"{rows[by_path[stem]][2]}")
        by_path[stem] = i
        by_name.setdefault(stem.rsplit("/", 1)[-1], []).append(i)
    chosen: List[Optional[int]] = []
    for rel in manifest_rel:
        stem = _stem(rel)
        i = by_path.get(stem)
        if i is None:
            cands = by_name.get(stem.rsplit("/", 1)[-1], [])
            if len(cands) > 1:
                raise DataToolError(f"{rel}: several transcripts match its file name ({table} lines "
                                    f"{', '.join(str(rows[j][2]) for j in cands)}); use paths relative to the "
                                    "manifest root in the table")
            i = cands[0] if cands else None
        chosen.append(i)
    return chosen, len(rows) - len({i for i in chosen if i is not None})


def make_labels(tsv: str, transcripts: str, delimiter: str = "|", case: str = "upper", keep_chars: str = "'",
                digits: str = "error", progress: bool = False,
                progress_interval: float = 10.0) -> Tuple[List[str], List[str], int]:
    """``(wrd_lines, ltr_lines, unused table rows)`` for the manifest ``tsv``. ``progress``: transcripts
    normalised, rate and ETA on stderr every ``progress_interval`` s."""
    if "|" in keep_chars:
        raise DataToolError("--keep-chars cannot contain '|', the word separator of .ltr files")
    manifest = read_manifest(tsv)
    rows = read_table(transcripts, delimiter)
    chosen, unused = match(manifest.rel_paths, rows, transcripts)
    missing = [(rel, lineno) for (rel, _, lineno), i in zip(manifest.entries, chosen) if i is None]
    if missing:
        named = ", ".join(f"{rel} ({tsv}:{lineno})" for rel, lineno in missing[:NAMED])
        raise DataToolError(f"{len(missing)} of {len(manifest.entries)} manifest entries have no transcript in "
                            f"{transcripts}: {named}" + (f" and {len(missing) - NAMED} more" if len(missing) > NAMED
                                                         else ""))
    wrd, ltr, errors = [], [], []
    prog = Progress(total=len(chosen), desc=f"text_labels {tsv}", unit="transcripts", interval_s=progress_interval,
                    enabled=progress)
    for i in chosen:
        _, text, lineno = rows[i]
        try:
            words = normalize_transcript(text, case, keep_chars, digits, where=f"{transcripts}:{lineno}")
        except DataToolError as exc:
            errors.append(str(exc))
        else:
            wrd.append(words)
            ltr.append(words_to_letters(words))
        prog.update(1)
    if errors:
        raise DataToolError(errors[0] if len(errors) == 1 else
                            f"{len(errors)} transcripts cannot be used; the first {min(len(errors), NAMED)}:\n  "
                            + "\n  ".join(errors[:NAMED]))
    return wrd, ltr, unused


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.text_labels", description=__doc__.split("\n")[0])
    p.add_argument("tsv", metavar="TSV", help="manifest produced by utils.generate_filelist")
    p.add_argument("--transcripts", required=True, help="UTF-8 table: <audio file><DELIMITER><transcript> per line")
    p.add_argument("--delimiter", default="|", help="field separator of the table (default '|'; '\\t' for a tab)")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    p.add_argument("--output-name", "--output_name", dest="output_name", required=True)
    p.add_argument("--case", choices=("upper", "lower", "keep"), default="upper",
                   help="letter case of the labels (default upper)")
    p.add_argument("--keep-chars", "--keep_chars", dest="keep_chars", default="'",
                   help="punctuation kept inside words (default the apostrophe); other punctuation becomes a space")
    p.add_argument("--digits", choices=("error", "keep"), default="error",
                   help="digits in a transcript: an error naming the line (default), or kept as letters")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--progress-interval", "--progress_interval", dest="progress_interval", type=float, default=10.0,
                   metavar="SECONDS", help="seconds between progress lines on stderr")
    args = p.parse_args(argv)
    import time

    t0 = time.monotonic()
    delimiter = "\t" if args.delimiter in ("\\t", "tab", "TAB") else args.delimiter
    wrd, ltr, unused = make_labels(args.tsv, args.transcripts, delimiter, args.case, args.keep_chars, args.digits,
                                   progress=not args.quiet, progress_interval=args.progress_interval)
    base = os.path.join(args.output_dir, args.output_name)
    write_lines(base + ".wrd", wrd)
    write_lines(base + ".ltr", ltr)
    alphabet = Counter(tok for line in ltr for tok in line.split())
    print(f"{base}.wrd/.ltr: {len(wrd)} utterances, {len(alphabet)} symbols: "
          + " ".join(sorted(alphabet)) + f" ({format_duration(time.monotonic() - t0)})", file=sys.stderr)
    if unused:
        print(f"WARNING: {unused} line(s) of {args.transcripts} match no file of {args.tsv} "
              "(expected when the table also lists other splits)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
