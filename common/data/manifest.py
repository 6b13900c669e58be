"""Manifest (``X.tsv``) and transcript (``X.ltr``) files (reference §4.1, §4.3, §4.4).

``X.tsv``: line 1 is the audio root directory; every further line is ``<path relative to root>\\t<num samples>``.
Entries shorter than ``min_sample_size`` are skipped (training only); their 0-based entry indices are kept so that
the labels file, which has one line per manifest entry, can be aligned.

``X.ltr``: one transcript per manifest entry, same order (header excluded). The number of lines must equal the number
of manifest entries; an empty transcript of a kept entry is an error.
"""
from __future__ import annotations

import logging
import operator
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Sequence, Union, overload

import numpy as np

from common.data.errors import DataError, PathLike, read_text, where

logger = logging.getLogger(__name__)


class StringTable(Sequence[str]):
    """A read-only sequence of strings kept as two numpy arrays: the UTF-8 bytes of all strings, one after the
    other, and their int64 start offsets.

    Why not a list: DataLoader workers are forked, and reading a ``str`` of a list in a worker writes its reference
    count, so every memory page holding one of the 281k path or transcript strings of a LibriSpeech-960 manifest is
    copied into every worker that reads from it (copy-on-write becomes a copy: the "memory leak" of PyTorch
    DataLoader workers, pytorch/pytorch#13246). A numpy buffer's pages are only read, so they stay shared. Items are
    decoded on access (about a microsecond); equality with a list or tuple compares the strings.
    """

    __slots__ = ("_data", "_offsets")

    def __init__(self, strings: Iterable[str] = ()):
        strings = strings if isinstance(strings, (list, tuple)) else list(strings)
        # two passes (byte lengths, then bytes into one buffer) so that no second copy of all strings is ever held
        offsets = np.zeros(len(strings) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass")) for s in strings),
                              dtype=np.int64, count=len(strings)), out=offsets[1:])
        buf = bytearray(int(offsets[-1]))
        view, pos = memoryview(buf), 0
        for s in strings:
            b = s.encode("utf-8", "surrogatepass")
            view[pos:pos + len(b)] = b
            pos += len(b)
        view.release()
        self._data = np.frombuffer(buf, dtype=np.uint8)
        self._data.flags.writeable = False
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> List[str]: ...

    def __getitem__(self, i: Union[int, slice]) -> Union[str, List[str]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        j = operator.index(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"StringTable index {i} out of range for {n} strings")
        return self._data[self._offsets[j]:self._offsets[j + 1]].tobytes().decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        data = self._data.tobytes()
        offsets = self._offsets.tolist()
        for a, b in zip(offsets, offsets[1:]):
            yield data[a:b].decode("utf-8", "surrogatepass")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringTable):
            return np.array_equal(self._offsets, other._offsets) and np.array_equal(self._data, other._data)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StringTable([{head}{', ...' if len(self) > 3 else ''}], {len(self)} strings)"


@dataclass
class Manifest:
    """The kept entries of a manifest file.

    Attributes:
        path: the ``.tsv`` file.
        root: audio root directory (line 1).
        files: relative path of each kept entry (a :class:`StringTable`; a list given here is converted).
        sizes: int64 number of samples of each kept entry.
        line_numbers: 1-based line in ``path`` of each kept entry (for error messages).
        skipped_indices: 0-based entry indices (header excluded) skipped for being shorter than min_sample_size.
        num_entries: number of entries in the file, kept or not.
    """

    path: str
    root: str
    files: Sequence[str]
    sizes: np.ndarray
    line_numbers: np.ndarray
    skipped_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    num_entries: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.files, StringTable):
            self.files = StringTable(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def audio_path(self, i: int) -> str:
        return os.path.join(self.root, self.files[i])


def read_lines(path: PathLike) -> List[str]:
    """Lines of a UTF-8 text file without their line terminators (\\n, \\r\\n or \\r; only those).

    Raises:
        DataError: the file is not UTF-8 (names the file, line and column).
    """
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def load_manifest(path: PathLike, min_sample_size: Optional[int] = None) -> Manifest:
    """Parse a ``.tsv`` manifest, skipping entries with fewer than ``min_sample_size`` samples.

    Raises:
        FileNotFoundError: the manifest is missing.
        DataError: empty file, a line that is not exactly two tab-separated fields, a size that is not a
            non-negative integer (message names the file and the 1-based line), an audio root directory (line 1)
            that does not exist while some entry is relative to it, or a file that is not UTF-8.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest not found: {path}")
    lines = read_lines(path)
    if not lines or not lines[0].strip():
        raise DataError(f"manifest {path} is empty or its first line (the audio root directory) is blank")
    root = lines[0].strip()
    files: List[str] = []
    sizes: List[int] = []
    line_numbers: List[int] = []
    skipped: List[int] = []
    for entry, raw in enumerate(lines[1:]):
        line_no = entry + 2
        fields = raw.strip().split("\t")
        if len(fields) != 2 or not fields[0]:
            raise DataError(
                f"malformed manifest line at {where(path, line_no)}: expected '<relative path>\\t<num samples>', "
                f"got {raw!r}"
            )
        try:
            size = int(fields[1])
        except ValueError:
            size = -1
        if size < 0:
            raise DataError(
                f"malformed manifest line at {where(path, line_no)}: number of samples {fields[1]!r} is not a "
                "non-negative integer"
            )
        if min_sample_size is not None and size < min_sample_size:
            skipped.append(entry)
            continue
        files.append(fields[0])
        sizes.append(size)
        line_numbers.append(line_no)
    if not os.path.isdir(root) and any(not os.path.isabs(f) for f in files):
        raise DataError(
            f"{where(path, 1)}: the audio root directory {root} does not exist (the manifest's entries are "
            "relative to it): fix line 1, or regenerate the manifest where the audio now is"
        )
    logger.info("%s: loaded %d, skipped %d samples", path, len(files), len(skipped))
    return Manifest(
        path=path,
        root=root,
        files=files,
        sizes=np.asarray(sizes, dtype=np.int64),
        line_numbers=np.asarray(line_numbers, dtype=np.int64),
        skipped_indices=np.asarray(skipped, dtype=np.int64),
        num_entries=len(lines) - 1,
    )


def single_file_manifest(path: PathLike) -> Manifest:
    """A one-entry manifest for an audio file (``inference.py --transcribe_wav``); its length is read from the file's
    header. The sample rate and channel count are checked when the audio is read.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: the header cannot be decoded.
    """
    import soundfile as sf

    fspath = os.path.abspath(os.fspath(path))
    if not os.path.isfile(fspath):
        raise FileNotFoundError(f"audio file not found: {fspath}")
    try:
        frames = int(sf.info(fspath).frames)
    except (sf.SoundFileError, RuntimeError) as e:
        raise DataError(f"cannot decode audio file {fspath}: {e}") from e
    return Manifest(path=fspath, root=os.path.dirname(fspath), files=[os.path.basename(fspath)],
                    sizes=np.asarray([frames], dtype=np.int64), line_numbers=np.asarray([1], dtype=np.int64),
                    num_entries=1)


@dataclass
class Labels:
    """Transcripts aligned with the kept entries of a manifest.

    Attributes:
        path: the labels file (e.g. ``train.ltr``).
        lines: the transcript of each kept manifest entry (stripped; a :class:`StringTable`, a list given here is
            converted).
        line_numbers: 1-based line of each in ``path``.
    """

    path: str
    lines: Sequence[str]
    line_numbers: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.lines, StringTable):
            self.lines = StringTable(self.lines)

    def __len__(self) -> int:
        return len(self.lines)


def load_labels(path: PathLike, manifest: Manifest) -> Labels:
    """Read the transcripts of ``manifest``'s kept entries from ``path``.

    Raises:
        FileNotFoundError: the labels file is missing.
        DataError: line count differs from the manifest's entry count (names both files and counts), or a kept
            entry has an empty transcript (names the file and line).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labels file not found: {path} (needed for manifest {manifest.path})")
    all_lines = read_lines(path)
    if len(all_lines) != manifest.num_entries:
        raise DataError(
            f"labels file {path} has {len(all_lines)} lines but manifest {manifest.path} has "
            f"{manifest.num_entries} entries (one transcript line per manifest entry expected)"
        )
    # entry e of the manifest (0-based, header excluded) is at manifest line e + 2 and label line e + 1
    entries = manifest.line_numbers - 2
    lines = []
    for e in entries.tolist():
        text = all_lines[e].strip()
        if not text:
            raise DataError(
                f"empty transcript at {where(path, e + 1)} (for {manifest.files[len(lines)]} at "
                f"{where(manifest.path, e + 2)})"
            )
        lines.append(text)
    return Labels(path=path, lines=lines, line_numbers=entries + 1)
