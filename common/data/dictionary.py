"""The label dictionary, with fairseq ``Dictionary`` semantics (reference §4.2).

Index layout: 0 ``<s>`` (bos, doubles as the CTC blank), 1 ``<pad>``, 2 ``</s>`` (eos), 3 ``<unk>``, then the file's
symbols in file order. For LibriSpeech letters the file has 28 symbols (``|`` first, so ``|`` = 4), K = 32.

File format: one ``<symbol> <count>`` line per symbol, split at the LAST space (so a symbol may contain spaces), with
an optional trailing ``#fairseq:overwrite`` flag. Without the flag a symbol already present (including the four
specials) is an error; with it the symbol is appended again under a new index and lookups return the new index
(the old slot stays, as in fairseq). A leading UTF-8 byte-order mark is ignored (else it would become part of the
first symbol, usually ``|``, and every label line would fail as "unknown symbol '|'").

Unknown label tokens are an error by default (naming the label file and line): mapping them silently to ``<unk>``
trains on wrong targets. ``on_unknown="unk"`` gives the reference behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Literal, Optional, Sequence

import torch

from common.data.errors import DataError, PathLike, read_text, where

OVERWRITE_FLAG = "#fairseq:overwrite"
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")
OnUnknown = Literal["error", "unk"]


@dataclass
class Dictionary:
    """Symbol <-> index table. Build with :meth:`load`, :meth:`from_text` or :meth:`from_symbols`."""

    symbols: List[str] = field(default_factory=lambda: list(SPECIAL_SYMBOLS))
    counts: List[int] = field(default_factory=lambda: [1] * len(SPECIAL_SYMBOLS))
    indices: Dict[str, int] = field(default_factory=lambda: {s: i for i, s in enumerate(SPECIAL_SYMBOLS)})
    source: str = "<memory>"

    bos: int = 0
    pad: int = 1
    eos: int = 2
    unk: int = 3
    nspecial: int = len(SPECIAL_SYMBOLS)

    # ---------------------------------------------------------------------------------------------- construction
    @classmethod
    def load(cls, path: PathLike) -> "Dictionary":
        """Read a ``dict.<labels>.txt`` file (e.g. ``dict.ltr.txt``); a file that is not UTF-8 is a
        :class:`DataError` naming the file and line."""
        return cls.from_text(read_text(path), source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> "Dictionary":
        """Parse dictionary text (as stored in fine-tuned checkpoints); ``source`` names it in errors."""
        d = cls(source=source)
        if text.startswith("\ufeff"):  # a UTF-8 byte-order mark (Notepad, Excel) would glue itself to symbol 1
            text = text[1:]
        for line_no, raw in enumerate(text.splitlines(), start=1):
            d._add_line(raw, source, line_no)
        return d

    @classmethod
    def from_symbols(cls, symbols: Iterable[str]) -> "Dictionary":
        """Dictionary with the four specials followed by ``symbols`` (count 1 each)."""
        d = cls()
        for s in symbols:
            d._append(s, 1, overwrite=False, loc="<symbols>")
        return d

    def _add_line(self, raw: str, source: str, line_no: int) -> None:
        loc = where(source, line_no)
        line = raw.rstrip()
        head, sep, tail = line.rpartition(" ")
        overwrite = False
        if sep and tail == OVERWRITE_FLAG:
            overwrite = True
            head, sep, tail = head.rpartition(" ")
        if not sep or not head:
            raise DataError(f"incorrect dictionary format at {loc}: expected '<symbol> <count> [flags]', got {raw!r}")
        try:
            count = int(tail)
        except ValueError:
            raise DataError(
                f"incorrect dictionary format at {loc}: count {tail!r} is not an integer (line {raw!r})"
            ) from None
        self._append(head, count, overwrite, loc)

    def _append(self, symbol: str, count: int, overwrite: bool, loc: str) -> None:
        if symbol in self.indices and not overwrite:
            raise DataError(
                f"duplicate symbol {symbol!r} in dictionary at {loc} "
                f"(already index {self.indices[symbol]}; add '{OVERWRITE_FLAG}' to allow it)"
            )
        self.indices[symbol] = len(self.symbols)
        self.symbols.append(symbol)
        self.counts.append(count)

    # ---------------------------------------------------------------------------------------------- lookups
    @property
    def blank(self) -> int:
        """CTC blank index (= bos = 0)."""
        return self.bos

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.indices

    def __getitem__(self, idx: int) -> str:
        """Symbol of an index; out-of-range indices give ``<unk>``."""
        return self.symbols[idx] if 0 <= idx < len(self.symbols) else self.symbols[self.unk]

    def index(self, symbol: str) -> int:
        """Index of a symbol, ``unk`` when absent."""
        return self.indices.get(symbol, self.unk)

    # ---------------------------------------------------------------------------------------------- encode/decode
    def encode_line(
        self,
        line: str,
        on_unknown: OnUnknown = "error",
        source: Optional[PathLike] = None,
        line_no: Optional[int] = None,
    ) -> torch.Tensor:
        """Encode a space-separated label line to an int32 tensor (no eos appended).

        Whitespace runs are collapsed. Unknown tokens raise a :class:`DataError` naming ``source:line_no``
        (``on_unknown="error"``) or map to ``unk`` (``on_unknown="unk"``, the reference).
        """
        ids = []
        for tok in line.split():
            idx = self.indices.get(tok)
            if idx is None:
                if on_unknown != "unk":
                    raise DataError(
                        f"unknown label symbol {tok!r} at {where(source, line_no)} "
                        f"(not in dictionary {self.source})"
                    )
                idx = self.unk
            ids.append(idx)
        return torch.tensor(ids, dtype=torch.int32)

    def string(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Decode ids to space-joined symbols, dropping bos/eos, unknown ids as ``<unk>`` (fairseq ``string``)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return " ".join(self[i] for i in ids if i not in (self.bos, self.eos))

    def to_text(self) -> str:
        """Serialise the non-special symbols in the file format (round-trips through :meth:`from_text`)."""
        lines = []
        seen = set(SPECIAL_SYMBOLS)
        for sym, cnt in zip(self.symbols[self.nspecial:], self.counts[self.nspecial:]):
            flag = f" {OVERWRITE_FLAG}" if sym in seen else ""
            seen.add(sym)
            lines.append(f"{sym} {cnt}{flag}")
        return "".join(line + "\n" for line in lines)
