"""Error type of the data package: every message names the offending file (and line, when known).

A data problem found at start-up must tell the user *where* to look. All loaders of this package raise
:class:`DataError` (a ``ValueError``) for malformed content, or ``FileNotFoundError`` for missing files, with a
location string produced by :func:`where`.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]


class DataError(ValueError):
    """Malformed or inconsistent input data (manifest, labels, dictionary, audio)."""


def where(path: Optional[PathLike], line: Optional[int] = None) -> str:
    """Render a location as ``'path:line'`` (1-based line of the file), ``'path'`` or ``'<unknown>'``."""
    if path is None:
        return "<unknown>"
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)


def first_few(indices: Sequence[int], describe: Callable[[int], str], limit: int = 5) -> str:
    """``describe(i)`` of the first ``limit`` indices joined by '; ', then how many more (one line for a message
    about several utterances)."""
    items = [describe(int(i)) for i in list(indices)[:limit]]
    more = len(indices) - len(items)
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def read_text(path: PathLike) -> str:
    """The content of a UTF-8 text file (universal newlines, as ``open(path, encoding="utf-8").read()``), without a
    leading byte-order mark (Notepad and Excel write one; it would otherwise glue itself to the first field: a
    filelist's root, a dictionary's first symbol, a label line's first letter).

    Raises:
        DataError: the file is not valid UTF-8; the message names the file, the 1-based line and column and the
            offending byte (Python's own error names neither the file nor the line).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return text[1:] if text.startswith("\ufeff") else text
    except UnicodeDecodeError:
        pass
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(not_utf8_message(path, data, exc.start)) from None
    raise AssertionError("unreachable: the text decoder refused bytes that decode")  # pragma: no cover


def not_utf8_message(path: PathLike, data: bytes, pos: int) -> str:
    """One line for a non-UTF-8 byte at offset ``pos`` of ``data`` (the bytes of ``path``): file, line, column."""
    line = data.count(b"\n", 0, pos) + 1
    column = pos - data.rfind(b"\n", 0, pos)
    return not_utf8_line_message(path, line, column, data[pos])


def not_utf8_line_message(path: PathLike, line: int, column: int, byte: int) -> str:
    """One line for a non-UTF-8 ``byte`` at 1-based ``line`` and ``column`` of ``path``."""
    return (f"{where(path, line)}: not UTF-8 text (byte 0x{byte:02x} at column {column}); filelists, "
            "transcripts and dictionaries must be UTF-8: convert the file (e.g. iconv -f latin1 -t utf-8)")


def error_message(exc: BaseException) -> str:
    """The message of ``exc`` for the user: without the worker traceback that torch's DataLoader wraps around an
    exception raised in a worker process ("Caught DataError in DataLoader worker process 1. Original Traceback...")."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    name, module = type(exc).__qualname__, type(exc).__module__
    for prefix in (f"{module}.{name}: ", f"{name}: "):
        i = text.rfind("\n" + prefix)
        if i >= 0:
            return text[i + 1 + len(prefix):].strip()
    lines = text.strip().splitlines()
    return lines[-1] if lines else text
