"""Small helpers shared by the data tools: errors, atomic writes, manifest (.tsv) reading."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterable, List


class DataToolError(Exception):
    """A user-facing error: printed as ``ERROR: <message>`` by :func:`run_main`, exit status 1."""


def run_main(main, argv=None) -> int:
    """Run ``main(argv)``; turn :class:`DataToolError` into an ``ERROR:`` line and status 1."""
    try:
        rc = main(argv)
    except DataToolError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0 if rc is None else int(rc)


def read_text(path: str) -> str:
    """The content of a UTF-8 text file (universal newlines), without a leading byte-order mark. A file that is not
    UTF-8 is a :class:`DataToolError` naming the file, the line and column and the offending byte (``common.data``'s
    reader and message)."""
    from common.data.errors import DataError, read_text as read_utf8_text

    try:
        return read_utf8_text(path)  # (it drops a leading byte-order mark)
    except DataError as exc:
        raise DataToolError(str(exc)) from None


def read_lines(path: str) -> List[str]:
    """Lines of a UTF-8 text file without their terminators, split as the trainer splits them (``\\n``, ``\\r\\n``,
    ``\\r``; not at the other characters ``str.splitlines`` breaks at), a final empty line dropped."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (no partial outputs)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def write_lines(path: str, lines: Iterable[str]) -> None:
    """Write one item per line (each terminated by ``\\n``) atomically."""
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


@dataclass
class Manifest:
    """A parsed wav2vec manifest: root directory and ``(relative path, n_samples, line number)`` entries."""

    path: str
    root: str
    entries: List[tuple]  # (rel_path: str, n_samples: int, lineno: int)

    @property
    def rel_paths(self) -> List[str]:
        return [e[0] for e in self.entries]


def read_manifest(path: str) -> Manifest:
    """Read a ``.tsv`` manifest (line 1: root; then ``rel<TAB>samples``), with errors naming file and line."""
    if not os.path.isfile(path):
        raise DataToolError(f"manifest {path} does not exist")
    lines = read_lines(path)
    if not lines:
        raise DataToolError(f"{path}:1: empty manifest (line 1 must be the audio root directory)")
    root = lines[0].strip()
    entries = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            raise DataToolError(f"{path}:{lineno}: empty line in manifest")
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataToolError(
                f"{path}:{lineno}: expected 2 tab-separated fields (path, samples), got {len(fields)}: {line!r}")
        try:
            n = int(fields[1])
        except ValueError:
            raise DataToolError(f"{path}:{lineno}: sample count {fields[1]!r} is not an integer") from None
        entries.append((fields[0], n, lineno))
    return Manifest(path=path, root=root, entries=entries)


LABEL_EXTENSIONS = ("wrd", "ltr")


@dataclass
class LabelledList:
    """A manifest plus its parallel label files (``{ext: lines}``), loaded from ``<prefix>.tsv`` etc."""

    prefix: str
    manifest: Manifest
    labels: dict

    def write_subset(self, out_prefix: str, indices: List[int]) -> None:
        """Write the entries ``indices`` (in the given order) as ``<out_prefix>.tsv`` + label files."""
        entries = self.manifest.entries
        write_lines(out_prefix + ".tsv",
                    [self.manifest.root] + [f"{entries[i][0]}\t{entries[i][1]}" for i in indices])
        for ext, lines in self.labels.items():
            write_lines(f"{out_prefix}.{ext}", [lines[i] for i in indices])


def load_labelled(prefix: str, extensions=LABEL_EXTENSIONS, required=("ltr",)) -> LabelledList:
    """Load ``<prefix>.tsv`` and the label files that exist; check that line counts agree."""
    manifest = read_manifest(prefix + ".tsv")
    labels = {}
    for ext in extensions:
        path = f"{prefix}.{ext}"
        if not os.path.isfile(path):
            if ext in required:
                raise DataToolError(f"label file {path} does not exist")
            continue
        lines = read_lines(path)
        if len(lines) != len(manifest.entries):
            raise DataToolError(f"{path} has {len(lines)} lines but {prefix}.tsv has "
                                f"{len(manifest.entries)} entries")
        labels[ext] = lines
    return LabelledList(prefix=prefix, manifest=manifest, labels=labels)
