"""Write word (.wrd) and letter (.ltr) label files for a LibriSpeech-layout manifest.

Usage::

    python -m utils.libri_labels TSV --output-dir D --output-name NAME

For every manifest entry ``<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` the transcript is read from
``<spk>-<chapter>.trans.txt`` in the same directory (lines ``<utt-id> TRANSCRIPT``). Writes, in
manifest order:

* ``D/NAME.wrd``: the transcript, e.g. ``AND A VERY``;
* ``D/NAME.ltr``: its characters separated by spaces, word boundaries as ``|`` and a trailing
  ``|``, e.g. ``A N D | A | V E R Y |``.

A missing transcript file or utterance id is an error naming the file (and the manifest line).
"""
from __future__ import annotations

import argparse
import os
import sys

from .common import DataToolError, read_lines, read_manifest, run_main, write_lines


def words_to_letters(words: str) -> str:
    """``"AND A VERY"`` -> ``"A N D | A | V E R Y |"``."""
    return " ".join(list(words.replace(" ", "|"))) + " |"


def transcript_path(audio_path: str) -> str:
    """``.../<spk>/<chapter>/x.flac`` -> ``.../<spk>/<chapter>/<spk>-<chapter>.trans.txt``."""
    chapter_dir = os.path.dirname(audio_path)
    chapter = os.path.basename(chapter_dir)
    speaker = os.path.basename(os.path.dirname(chapter_dir))
    return os.path.join(chapter_dir, f"{speaker}-{chapter}.trans.txt")


def read_transcripts(path: str) -> dict:
    """``{utt_id: text}`` from a ``*.trans.txt`` file (whitespace inside the text normalised)."""
    table = {}
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        utt, _, text = line.strip().partition(" ")
        if utt in table:
            raise DataToolError(f"{path}:{lineno}: duplicate utterance id {utt}")
        table[utt] = " ".join(text.split())
    return table


class TranscriptLookup:
    """Caches ``*.trans.txt`` files while labels are produced."""

    def __init__(self):
        self._cache = {}

    def text_for(self, audio_path: str, where: str) -> str:
        trans = transcript_path(audio_path)
        if trans not in self._cache:
            if not os.path.isfile(trans):
                raise DataToolError(f"{where}: transcript file {trans} does not exist")
            self._cache[trans] = read_transcripts(trans)
        utt = os.path.basename(audio_path).rsplit(".", 1)[0]
        table = self._cache[trans]
        if utt not in table:
            raise DataToolError(f"{where}: utterance id {utt} not found in {trans}")
        return table[utt]


def make_labels(tsv: str) -> tuple:
    """Return ``(wrd_lines, ltr_lines)`` for the manifest ``tsv``."""
    manifest = read_manifest(tsv)
    lookup = TranscriptLookup()
    wrd, ltr = [], []
    for rel, _, lineno in manifest.entries:
        text = lookup.text_for(os.path.join(manifest.root, rel), f"{tsv}:{lineno}")
        wrd.append(text)
        ltr.append(words_to_letters(text))
    return wrd, ltr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.libri_labels", description=__doc__.split("\n")[0])
    p.add_argument("tsv", metavar="TSV", help="manifest produced by utils.generate_filelist")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    p.add_argument("--output-name", "--output_name", dest="output_name", required=True)
    args = p.parse_args(argv)
    wrd, ltr = make_labels(args.tsv)
    base = os.path.join(args.output_dir, args.output_name)
    write_lines(base + ".wrd", wrd)
    write_lines(base + ".ltr", ltr)
    print(f"{base}.wrd/.ltr: {len(wrd)} utterances", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
