"""Error type of the data package: every message names the offending file (and line, when known).

A data problem found at start-up must tell the user *where* to look. All loaders of this package raise
:class:`DataError` (a ``ValueError``) for malformed content, or ``FileNotFoundError`` for missing files, with a
location string produced by :func:`where`.
"""
from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class DataError(ValueError):
    """Malformed or inconsistent input data (manifest, labels, dictionary, audio)."""


def where(path: Optional[PathLike], line: Optional[int] = None) -> str:
    """Render a location as ``'path:line'`` (1-based line of the file), ``'path'`` or ``'<unknown>'``."""
    if path is None:
        return "<unknown>"
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)


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
