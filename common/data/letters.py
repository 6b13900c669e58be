"""The letter tokens of a word, as letter label files (``.ltr``) spell it: each character together with the
combining marks that follow it (``Q`` + U+0303 is one letter, as are the Devanagari ``क`` + ``ि``), so that
labels, dictionaries and lexicons agree on what one output symbol is. Standard library only."""
from __future__ import annotations

import unicodedata
from typing import List

__all__ = ["letter_tokens"]


def letter_tokens(word: str) -> List[str]:
    """``word``'s characters, each with the combining marks (Unicode category M) that follow it."""
    out: List[str] = []
    for c in word:
        if out and unicodedata.category(c)[0] == "M":
            out[-1] += c
        else:
            out.append(c)
    return out
