"""Word n-gram language model: interpolated modified Kneser-Ney estimation, ARPA files, scoring for beam search.

    lm = NGramLM.estimate(line.split() for line in open("train.wrd"))   # order 4, modified Kneser-Ney
    lm.write_arpa("lm.arpa")
    lm = NGramLM.load_arpa("4-gram.arpa.gz")                              # streaming; gzip detected by content
    state = lm.start_state()                                             # context "<s>"
    state, logp = lm.score(state, "HELLO")                               # natural log of p(HELLO | <s>)
    logp_end = lm.final_score(state)                                     # natural log of p(</s> | <s> HELLO)

Estimation (:meth:`NGramLM.estimate`) follows Chen & Goodman's interpolated modified Kneser-Ney as KenLM's ``lmplz``
does it: n-grams of the highest order keep their counts, lower orders use continuation counts (the number of distinct
words seen before them) except n-grams starting with ``<s>``, which keep their counts; three discounts per order
``D1, D2, D3+`` from the count-of-counts ``n1..n4`` of those adjusted counts (``Y = n1 / (n1 + 2 n2)``,
``Dk = k - (k + 1) Y n_{k+1} / n_k``); the unigram distribution is interpolated with the uniform distribution over
the vocabulary without ``<s>`` (so ``<unk>`` receives the left-over mass). When an order's count-of-counts cannot
give valid discounts (tiny corpora: some ``n_k`` is 0, or a discount falls outside ``(0, k)``) that order uses
one absolute discount ``D = Y`` (0.5 when ``n1`` or ``n2`` is 0): plain interpolated Kneser-Ney. The result is
stored in backoff form (what ARPA files hold): ``p(w | h)`` for every seen n-gram and ``bow(h) = gamma(h)``, the
interpolation weight, for every context. Probabilities over the vocabulary (plus ``</s>``) sum to one for every
context.

ARPA files (:meth:`NGramLM.load_arpa`) are read line by line (plain or gzip) into compact NumPy tables: each
n-gram is one int64 key ``(row of its first n-1 words in the table of order n-1) * V + last word`` in a sorted array,
plus its log10 probability and backoff (float32 above 20 M n-grams): no Python object per n-gram. Measured: 4.2 M
n-grams load in ~15 s with a ~250 MB peak; extrapolated, LibriSpeech's 4-gram (~190 M n-grams) takes ~10 minutes,
a ~5-6 GB peak and ~3 GB afterwards. KenLM (the ``flashlight`` decoder backend) is faster for such files.
Malformed files raise :class:`ARPAError` naming the file and line.

Scoring is the standard backoff recursion: the longest n-gram ``(h_k .. h_n, w)`` present gives its probability,
plus the backoffs of every longer context. A state is a tuple of table rows (the longest suffixes of the history
that are n-grams), hashable and cheap to compare; :meth:`NGramLM.score_id` memoises (state, word) pairs.

``python -m common.ngram_lm`` builds ``lm.arpa`` and a letter ``lexicon.txt`` from transcripts, or a lexicon from
an ARPA file's vocabulary (see :func:`main` and docs/INFERENCE.md).
"""

from __future__ import annotations

import array
import gzip
import io
import itertools
import logging
import math
import os
import time
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from common.data.errors import DataError, not_utf8_line_message

__all__ = ["ARPAError", "NGramLM", "BOS", "EOS", "UNK", "LN10", "read_arpa_vocabulary", "open_text", "main"]

LOG = logging.getLogger(__name__)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
#: log10 probability written for ``<s>`` (never predicted) and given to a missing ``<unk>`` (KenLM's conventions)
LOG10_ZERO_BOS = -99.0
LOG10_MISSING_UNK = -100.0
#: tables with at most this many n-grams are indexed with a Python dict (fast lookups); larger ones are searched
DICT_INDEX_LIMIT = 500_000
#: above this many n-grams in total, ARPA values are stored as float32 (half the memory)
FLOAT64_LIMIT = 20_000_000
_CHUNK = 1 << 20
_CACHE_LIMIT = 2_000_000
PROGRESS_INTERVAL_S = 10.0  # seconds between progress lines (estimate, write_arpa, load_arpa and the CLI)
_PROGRESS_STEP = 1 << 16  # items between two progress updates of the estimation and the ARPA writer


def _progress(enabled: bool, interval_s: float, **kwargs):
    """A :class:`common.progress.Progress` on stderr, or None when progress is off."""
    if not enabled:
        return None
    from common.progress import Progress

    return Progress(interval_s=interval_s, **kwargs)


def _chunks(items: Iterable, n: Optional[int] = None) -> Iterator[list]:
    """``items`` in lists of ``n`` (default ``_PROGRESS_STEP``; the last one shorter), to report progress between
    them."""
    n = n or _PROGRESS_STEP
    it = iter(items)
    while True:
        part = list(itertools.islice(it, n))
        if not part:
            return
        yield part

State = Tuple[int, ...]


class ARPAError(ValueError):
    """A malformed ARPA file; the message names the file and line."""


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: str):
    """A text stream (UTF-8) over a plain or gzip-compressed file (recognised by its magic bytes, not its name)."""
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def first_non_utf8(path: str, chunk_size: int = 1 << 22) -> Optional[Tuple[int, int, int]]:
    """``(line, column, byte)`` (1-based) of the first byte of ``path`` (plain or gzip) that is not UTF-8, or None if
    the file decodes. Reads in chunks: a multi-GB corpus or LM costs no more memory than a chunk."""
    line, column = 1, 0  # position after the bytes consumed so far (column = bytes since the last newline)
    carry = b""  # an incomplete character at the end of the previous chunk
    with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as fh:
        while True:
            chunk = fh.read(chunk_size)
            data, carry = carry + chunk, b""
            if not data:
                return None
            bad = None
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if chunk and exc.reason == "unexpected end of data":  # a character split by the chunk boundary
                    data, carry = data[:exc.start], data[exc.start:]
                else:
                    bad = exc.start
            good = data if bad is None else data[:bad]
            newlines = good.count(b"\n")
            line += newlines
            column = len(good) - good.rfind(b"\n") - 1 if newlines else column + len(good)
            if bad is not None:
                return line, column + 1, data[bad]
            if not chunk:
                return None


def not_utf8_error(path: str) -> DataError:
    """The error for a text file (plain or gzip) that is not UTF-8: its file, line, column and byte (a decoding
    stream knows neither the line nor the column: the file is scanned again, in chunks, on this error path)."""
    found = first_non_utf8(path)
    if found is None:  # pragma: no cover - the stream refused it
        return DataError(f"{path}: not UTF-8 text")
    return DataError(not_utf8_line_message(path, *found))


def not_utf8_arpa_error(path: str) -> "ARPAError":
    """:func:`not_utf8_error` for a language model: often a binary KenLM model given where an ARPA file goes."""
    found = first_non_utf8(path)
    if found is None:  # pragma: no cover
        return ARPAError(f"{path}: not a UTF-8 text ARPA file")
    line, _, byte = found
    return ARPAError(f"{path}:{line}: not a UTF-8 text ARPA file (byte 0x{byte:02x}); a binary KenLM model can be "
                     "read only by --decoder_backend flashlight")


# ----------------------------------------------------------------------------------------------- tables


class _Table:
    """The n-grams of one order: sorted int64 keys, log10 probabilities and log10 backoffs (0 = none)."""

    __slots__ = ("keys", "prob", "bow", "find", "_index", "n")

    def __init__(self, keys: np.ndarray, prob: np.ndarray, bow: np.ndarray, dense: bool = False):
        self.keys = keys
        self.n = int(len(keys))
        self._index = None
        if dense:  # unigrams: key == row == word id
            n = self.n
            self.find = lambda key: key if 0 <= key < n else None
        elif self.n <= DICT_INDEX_LIMIT:
            self._index = dict(zip(keys.tolist(), range(self.n)))
            self.find = self._index.get
        else:
            self.find = self._search
        if self.n <= DICT_INDEX_LIMIT:  # Python floats index faster than NumPy scalars
            self.prob, self.bow = prob.tolist(), bow.tolist()
        else:
            self.prob, self.bow = prob, bow

    def _search(self, key: int) -> Optional[int]:
        i = int(self.keys.searchsorted(key))
        if i < self.n and int(self.keys[i]) == key:
            return i
        return None

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """Rows of many keys at once; -1 where absent."""
        pos = np.searchsorted(self.keys, keys)
        pos_c = np.minimum(pos, max(self.n - 1, 0))
        found = (pos < self.n) & (self.keys[pos_c] == keys) if self.n else np.zeros(len(keys), bool)
        return np.where(found, pos_c, -1)

    def values(self) -> Tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.prob, dtype=np.float64), np.asarray(self.bow, dtype=np.float64)


# ----------------------------------------------------------------------------------------------- the model


class NGramLM:
    """A backoff word n-gram model (see the module docstring). Build with :meth:`estimate` or :meth:`load_arpa`."""

    def __init__(self, vocab: List[str], tables: List[_Table], source: str = "<memory>",
                 discounts: Optional[List[Tuple[float, float, float]]] = None):
        self.vocab = vocab
        self.word_index: Dict[str, int] = {w: i for i, w in enumerate(vocab)}
        self.tables = tables
        self.order = len(tables)
        self.source = source
        self.discounts = discounts
        self.V = len(vocab)
        for special in (BOS, EOS, UNK):
            if special not in self.word_index:
                raise ARPAError(f"{source}: the language model has no {special} unigram")
        self.bos, self.eos, self.unk = (self.word_index[s] for s in (BOS, EOS, UNK))
        self._cache: Dict[Tuple[State, int], Tuple[State, float]] = {}

    # ---------------------------------------------------------------------------------------------- queries
    def __len__(self) -> int:
        return sum(t.n for t in self.tables)

    def counts(self) -> List[int]:
        """Number of n-grams per order (1..N)."""
        return [t.n for t in self.tables]

    def word_id(self, word: str) -> int:
        """Vocabulary index of ``word`` (``<unk>``'s when the model does not know it)."""
        return self.word_index.get(word, self.unk)

    def __contains__(self, word: str) -> bool:
        return word in self.word_index

    def start_state(self) -> State:
        """The state after ``<s>`` (the beginning of a sentence)."""
        return (self.bos,) if self.order > 1 else ()

    def null_state(self) -> State:
        """The empty context (unigram probabilities)."""
        return ()

    def score(self, state: State, word: str) -> Tuple[State, float]:
        """``(new_state, ln p(word | state))``; unknown words are scored as ``<unk>``."""
        return self.score_id(state, self.word_index.get(word, self.unk))

    def final_score(self, state: State) -> float:
        """``ln p(</s> | state)``: the end of the sentence."""
        return self.score_id(state, self.eos)[1]

    def score_id(self, state: State, w: int) -> Tuple[State, float]:
        """:meth:`score` by vocabulary index (memoised)."""
        key = (state, w)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        tables = self.tables
        V = self.V
        best = tables[0].prob[w]
        best_k = 1
        new = [w]
        n = min(len(state), self.order - 1)
        for k in range(2, n + 2):  # n-gram of order k: context = suffix of length k-1, row state[k-2]
            ctx = state[k - 2]
            row = tables[k - 1].find(ctx * V + w) if ctx >= 0 else None
            if row is None:
                new.append(-1)
                continue
            best, best_k = tables[k - 1].prob[row], k
            new.append(row)
        logp = float(best)
        for j in range(best_k, n + 1):  # contexts longer than the n-gram found: add their backoffs
            r = state[j - 1]
            if r >= 0:
                logp += float(tables[j - 1].bow[r])
        del new[self.order - 1:]
        while new and new[-1] < 0:
            new.pop()
        out = (tuple(new), logp * LN10)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = out
        return out

    def context_state(self, words: Sequence[str]) -> State:
        """The state after ``words`` (a context starting with ``<s>`` starts a sentence; otherwise from nothing)."""
        words = list(words)
        if words and words[0] == BOS:
            state, words = self.start_state(), words[1:]
        else:
            state = self.null_state()
        for w in words:
            state = self.score(state, w)[0]
        return state

    def sentence_score(self, words: Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """Natural log probability of a word sequence (with ``<s>`` / ``</s>`` by default)."""
        state = self.start_state() if bos else self.null_state()
        total = 0.0
        for w in words:
            state, lp = self.score(state, w)
            total += lp
        if eos:
            total += self.final_score(state)
        return total

    # ---------------------------------------------------------------------------------------------- estimation
    @classmethod
    def estimate(cls, sentences: Iterable[Sequence[str] | str], order: int = 4,
                 discount: Optional[float] = None, progress: bool = False,
                 progress_interval: float = PROGRESS_INTERVAL_S) -> "NGramLM":
        """Interpolated modified Kneser-Ney estimate from sentences (word sequences or whitespace-separated
        strings). ``discount`` (0 < D < 1): one absolute discount for every count and order instead (plain
        interpolated Kneser-Ney; used by the hand-computed tests). Everything is held in memory (Python dicts):
        fine for transcripts up to a few million words; use KenLM's ``lmplz`` for larger text. ``progress``:
        progress lines on stderr every ``progress_interval`` s: sentences counted (with an ETA when
        ``sentences`` has a length), then n-grams processed by the estimation's four passes (remap, adjusted
        counts, probabilities, tables) with an ETA."""
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if discount is not None and not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        index: Dict[str, int] = {UNK: 0, BOS: 1, EOS: 2}
        bos, eos = 1, 2
        counts: List[Counter] = [Counter() for _ in range(order)]
        n_sent = 0
        total = len(sentences) if hasattr(sentences, "__len__") else None  # type: ignore[arg-type]
        prog = _progress(progress, progress_interval, total=total, desc="counting n-grams", unit="sentences")
        for sent in sentences:
            words = sent.split() if isinstance(sent, str) else list(sent)
            toks = [bos]
            for w in words:
                if w in (BOS, EOS):
                    raise ValueError(f"sentence {n_sent + 1} contains the reserved token {w!r}")
                i = index.get(w)
                if i is None:
                    i = index[w] = len(index)
                toks.append(i)
            toks.append(eos)
            n_sent += 1
            for k in range(1, order + 1):
                if len(toks) >= k:
                    counts[k - 1].update(zip(*[toks[i:] for i in range(k)]))
            if prog is not None and not n_sent % 4096:
                prog.update_to(n_sent)
        if prog is not None:
            prog.update_to(n_sent)
            prog.close()
        if n_sent == 0:
            raise ValueError("no text to estimate a language model from")
        # vocabulary in a stable order: specials, then words sorted
        words_sorted = sorted(w for w in index if w not in (UNK, BOS, EOS))
        vocab = [UNK, BOS, EOS] + words_sorted
        remap = {index[w]: i for i, w in enumerate(vocab)}
        # the passes below each visit every n-gram once: 4 x the n-gram count is the work the progress line counts
        n_grams = sum(len(ck) for ck in counts)
        prog = _progress(progress, progress_interval, total=4 * n_grams, desc="estimating: remapping",
                         unit="n-grams")

        def advance(n: int, desc: str) -> None:
            if prog is not None:
                prog.update(n, desc=f"estimating: {desc}")

        remapped: List[Counter] = []
        for k, ck in enumerate(counts, start=1):
            new: Dict[Tuple[int, ...], int] = {}
            for part in _chunks(ck.items()):
                new.update({tuple(remap[t] for t in g): c for g, c in part})
                advance(len(part), f"remapping {k}-grams")
            remapped.append(Counter(new))
        counts = remapped
        bos, eos = 1, 2
        V = len(vocab)

        # adjusted counts: highest order and <s>-initial n-grams keep counts, others continuation counts
        adjusted: List[Dict[Tuple[int, ...], int]] = [dict() for _ in range(order)]
        adjusted[order - 1] = dict(counts[order - 1])
        advance(len(counts[order - 1]), f"adjusted counts of {order}-grams")
        for k in range(order - 1, 0, -1):  # order k (index k-1) from order k+1
            cont = Counter(g[1:] for g in counts[k])
            adj_k: Dict[Tuple[int, ...], int] = {}
            for part in _chunks(counts[k - 1].items()):
                adj_k.update({g: (c if g[0] == bos else cont[g]) for g, c in part})
                advance(len(part), f"adjusted counts of {k}-grams")
            adjusted[k - 1] = adj_k
        adjusted[0].pop((bos,), None)

        discounts = []
        for k in range(order):
            if discount is not None:
                discounts.append((discount, discount, discount))
            else:
                discounts.append(_kn_discounts(Counter(adjusted[k].values())))

        # interpolated probabilities, lowest order first
        prob: List[Dict[Tuple[int, ...], float]] = []
        bow: List[Dict[Tuple[int, ...], float]] = [dict() for _ in range(order)]
        for k in range(1, order + 1):
            adj = adjusted[k - 1]
            d1, d2, d3 = discounts[k - 1]
            denom: Dict[Tuple[int, ...], float] = {}
            mass: Dict[Tuple[int, ...], float] = {}
            for part in _chunks(adj.items()):
                for g, a in part:
                    h = g[:-1]
                    denom[h] = denom.get(h, 0.0) + a
                    mass[h] = mass.get(h, 0.0) + (d1 if a == 1 else d2 if a == 2 else d3)
                advance(len(part) // 2, f"probabilities of {k}-grams")
            gamma = {h: mass[h] / denom[h] for h in denom}
            pk: Dict[Tuple[int, ...], float] = {}
            if k == 1:
                uniform = 1.0 / (V - 1)  # every word but <s>
                g0 = gamma.get((), 1.0)
                for w in range(V):
                    if w == bos:
                        continue
                    a = adj.get((w,), 0)
                    alpha = max(a - (d1 if a == 1 else d2 if a == 2 else d3), 0.0) / denom[()] if a else 0.0
                    pk[(w,)] = alpha + g0 * uniform
            else:
                lower = prob[k - 2]
                for part in _chunks(adj.items()):
                    for g, a in part:
                        h = g[:-1]
                        alpha = max(a - (d1 if a == 1 else d2 if a == 2 else d3), 0.0) / denom[h]
                        pk[g] = alpha + gamma[h] * lower[g[1:]]
                    advance(len(part) // 2, f"probabilities of {k}-grams")
                for h, gm in gamma.items():
                    bow[k - 2][h] = gm
            prob.append(pk)

        # tables: keys = row(prefix) * V + last word, sorted
        tables: List[_Table] = []
        p1 = np.full(V, LOG10_ZERO_BOS)
        b1 = np.zeros(V)
        for (w,), p in prob[0].items():
            p1[w] = math.log10(p)
        for (w,), b in bow[0].items():
            b1[w] = math.log10(b)
        tables.append(_Table(np.arange(V, dtype=np.int64), p1, b1, dense=True))
        advance(len(counts[0]), "tables of 1-grams")
        rowmap: Dict[Tuple[int, ...], int] = {(w,): w for w in range(V)}
        for k in range(2, order + 1):
            grams = list(prob[k - 1])
            keys = np.fromiter((rowmap[g[:-1]] * V + g[-1] for g in grams), dtype=np.int64, count=len(grams))
            perm = np.argsort(keys, kind="stable")
            grams = [grams[i] for i in perm]
            advance(len(grams) // 4, f"tables of {k}-grams")
            pk = np.array([math.log10(prob[k - 1][g]) for g in grams], dtype=np.float64)
            advance(len(grams) // 4, f"tables of {k}-grams")
            bk = np.array([math.log10(bow[k - 1][g]) if g in bow[k - 1] else 0.0 for g in grams], dtype=np.float64)
            advance(len(grams) // 4, f"tables of {k}-grams")
            tables.append(_Table(keys[perm], pk, bk))
            rowmap = {g: i for i, g in enumerate(grams)}
            advance(len(grams) // 4, f"tables of {k}-grams")
        if prog is not None:
            prog.update_to(prog.total, desc="estimating: done")
            prog.close()
        return cls(vocab, tables, source="<estimated>", discounts=discounts)

    # ---------------------------------------------------------------------------------------------- ARPA out
    def ngram_rows(self, k: int) -> np.ndarray:
        """The word ids of every n-gram of order ``k`` (rows in table order), as an ``n x k`` int array."""
        t = self.tables[k - 1]
        if k == 1:
            return np.arange(self.V, dtype=np.int64)[:, None]
        prefix = self.ngram_rows(k - 1)
        return np.concatenate([prefix[t.keys // self.V], (t.keys % self.V)[:, None]], axis=1)

    def write_arpa(self, path: str, progress: bool = False, progress_interval: float = PROGRESS_INTERVAL_S) -> None:
        """Write the standard ARPA format (log10 probabilities, backoffs where not 0); values are written with
        ``repr`` so that reading the file back gives bit-identical scores. ``.gz`` paths are gzip-compressed.
        ``progress``: n-grams written, rate and ETA on stderr every ``progress_interval`` s."""
        prog = _progress(progress, progress_interval, total=sum(t.n for t in self.tables), desc=f"writing {path}",
                         unit="n-grams")
        opener = (lambda: io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8")) if path.endswith(".gz") \
            else (lambda: open(path, "w", encoding="utf-8"))
        with opener() as fh:
            fh.write("\n\\data\\\n")
            for k, t in enumerate(self.tables, start=1):
                fh.write(f"ngram {k}={t.n}\n")
            for k, t in enumerate(self.tables, start=1):
                fh.write(f"\n\\{k}-grams:\n")
                prob, bow = t.values()
                words = self.ngram_rows(k)
                vocab = self.vocab
                top = k == self.order
                lines = []
                for i in range(t.n):
                    text = " ".join(vocab[w] for w in words[i])
                    p = prob[i]
                    ps = "-99" if p == LOG10_ZERO_BOS else repr(float(p))
                    if not top and bow[i] != 0.0:
                        lines.append(f"{ps}\t{text}\t{repr(float(bow[i]))}\n")
                    else:
                        lines.append(f"{ps}\t{text}\n")
                    if len(lines) >= _PROGRESS_STEP:
                        fh.write("".join(lines))
                        if prog is not None:
                            prog.update(len(lines))
                        lines.clear()
                fh.write("".join(lines))
                if prog is not None:
                    prog.update(len(lines))
            fh.write("\n\\end\\\n")
        if prog is not None:
            prog.close()

    # ---------------------------------------------------------------------------------------------- ARPA in
    @classmethod
    def load_arpa(cls, path: str, dtype: Optional[np.dtype] = None, progress: bool = False) -> "NGramLM":
        """Read an ARPA file (plain or gzip), streaming. ``dtype``: value precision (default float64, float32 for
        files with more than 20 M n-grams). A missing ``<unk>`` is added with log10 probability -100 (KenLM).
        ``progress``: print a progress line (``common.progress``) every 10 s while reading."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"language model not found: {path}")
        with open_text(path) as fh:
            try:
                return _ArpaReader(path, fh, dtype, progress).read(cls)
            except UnicodeDecodeError:
                raise not_utf8_arpa_error(path) from None


def _kn_discounts(coc: Counter) -> Tuple[float, float, float]:
    """Modified Kneser-Ney discounts ``(D1, D2, D3+)`` from count-of-counts; one absolute discount when they are
    degenerate (see the module docstring)."""
    n1, n2, n3, n4 = (coc.get(i, 0) for i in (1, 2, 3, 4))
    if n1 > 0 and n2 > 0:
        y = n1 / (n1 + 2.0 * n2)
        if n3 > 0 and n4 > 0:
            d = (1.0 - 2.0 * y * n2 / n1, 2.0 - 3.0 * y * n3 / n2, 3.0 - 4.0 * y * n4 / n3)
            if all(0.0 < di < i for i, di in enumerate(d, start=1)):
                return d
        return (y, y, y)
    return (0.5, 0.5, 0.5)


class _ArpaReader:
    def __init__(self, path: str, fh, dtype, progress: bool = False):
        self.path = path
        self.fh = fh
        self.lineno = 0
        self.dtype = dtype
        self.pending: Optional[str] = None
        self.show_progress = progress
        self.progress = None
        self.typecode = "d"

    def error(self, msg: str, line: Optional[int] = None) -> ARPAError:
        return ARPAError(f"{self.path}:{self.lineno if line is None else line}: {msg}")

    def next_line(self) -> Optional[str]:
        if self.pending is not None:
            line, self.pending = self.pending, None
            return line
        line = self.fh.readline()
        if not line:
            return None
        self.lineno += 1
        return line.strip()

    def read(self, cls) -> NGramLM:
        # header
        while True:
            line = self.next_line()
            if line is None:
                raise ARPAError(f"{self.path}: no \\data\\ header: not an ARPA file")
            if line == "\\data\\":
                break
        expected: Dict[int, int] = {}
        while True:
            line = self.next_line()
            if line is None:
                raise self.error("unexpected end of file in the \\data\\ header")
            if not line:
                continue
            if line.startswith("ngram "):
                try:
                    k_text, n_text = line[6:].split("=")
                    k, n = int(k_text), int(n_text)
                except ValueError:
                    raise self.error(f"bad count line {line!r} (expected 'ngram N=count')") from None
                if k != len(expected) + 1 or n < 0:
                    raise self.error(f"bad count line {line!r}: orders must be 1, 2, ... in sequence")
                expected[k] = n
                continue
            if line.startswith("\\"):
                self.pending = line
                break
            raise self.error(f"unexpected line {line!r} in the \\data\\ header")
        if not expected:
            raise self.error("the \\data\\ header lists no 'ngram N=count' lines")
        order = len(expected)
        dtype = np.dtype(self.dtype or (np.float64 if sum(expected.values()) <= FLOAT64_LIMIT else np.float32))
        self.typecode = "f" if dtype == np.float32 else "d"
        self.progress = _progress(self.show_progress, PROGRESS_INTERVAL_S, total=sum(expected.values()),
                                  desc=f"reading {self.path}", unit="n-grams")
        vocab: List[str] = []
        index: Dict[str, int] = {}
        tables: List[_Table] = []
        for k in range(1, order + 1):
            line = self.next_line()
            while line == "":
                line = self.next_line()
            if line != f"\\{k}-grams:":
                raise self.error(f"expected the section header \\{k}-grams:, got {line!r}"
                                 if line is not None else f"unexpected end of file before \\{k}-grams:")
            if k == 1:
                tables.append(self._read_unigrams(expected[1], vocab, index, dtype, order))
                if UNK not in index:  # added before the n-grams are read: their keys use the vocabulary size
                    LOG.warning("%s has no <unk>: unknown words get log10 probability %s", self.path,
                                LOG10_MISSING_UNK)
                    prob, bow = tables[0].values()
                    index[UNK] = len(vocab)
                    vocab.append(UNK)
                    tables[0] = _Table(np.arange(len(vocab), dtype=np.int64),
                                       np.append(prob, LOG10_MISSING_UNK).astype(dtype),
                                       np.append(bow, 0.0).astype(dtype), dense=True)
            else:
                tables.append(self._read_ngrams(k, expected[k], index, tables, dtype, order))
        line = self.next_line()
        while line == "":
            line = self.next_line()
        if line != "\\end\\":
            raise self.error(f"expected \\end\\ after the {order}-grams, got {line!r}" if line is not None
                             else "unexpected end of file: no \\end\\ (truncated file?)")
        for special in (BOS, EOS):
            if special not in index:
                raise ARPAError(f"{self.path}: the 1-grams have no {special}")
        if self.progress is not None:
            self.progress.done = self.progress.total
            self.progress.close()
        return cls(vocab, tables, source=self.path)

    def _parse(self, line: str, k: int, order: int) -> Tuple[float, List[str], float]:
        parts = line.split()
        if len(parts) == k + 1:
            bow = 0.0
        elif len(parts) == k + 2 and k < order:
            try:
                bow = float(parts[-1])
            except ValueError:
                raise self.error(f"bad backoff weight {parts[-1]!r} in {line!r}") from None
            if not math.isfinite(bow):
                raise self.error(f"non-finite backoff weight in {line!r}")
        else:
            raise self.error(f"a {k}-gram line needs a log10 probability, {k} words"
                             f"{' and an optional backoff' if k < order else ''}; got {line!r}")
        try:
            prob = float(parts[0])
        except ValueError:
            raise self.error(f"bad log10 probability {parts[0]!r} in {line!r}") from None
        if not (prob <= 0.0):  # also NaN
            raise self.error(f"log10 probability must be <= 0, got {parts[0]!r}")
        return prob, parts[1:k + 1], bow

    def _section_lines(self, k: int, n_expected: int) -> Iterator[Tuple[int, str]]:
        count = 0
        while True:
            line = self.next_line()
            if line is None or line == "" or line.startswith("\\"):
                if line is not None and line.startswith("\\"):
                    self.pending = line
                if count != n_expected:
                    raise self.error(f"the \\{k}-grams: section has {count} entries but the header says "
                                     f"{n_expected}" + ("" if line is not None else " (truncated file?)"))
                return
            count += 1
            if self.progress is not None and not count & 0xFFFF:
                self.progress.update(0x10000)
            yield self.lineno, line

    def _read_unigrams(self, n: int, vocab: List[str], index: Dict[str, int], dtype, order: int) -> _Table:
        prob = array.array(self.typecode)
        bow = array.array(self.typecode)
        for lineno, line in self._section_lines(1, n):
            p, (w,), b = self._parse(line, 1, order)
            if w in index:
                raise self.error(f"duplicate 1-gram {w!r} (first at 1-gram {index[w] + 1})")
            index[w] = len(vocab)
            vocab.append(w)
            prob.append(p)
            bow.append(b)
        return _Table(np.arange(len(vocab), dtype=np.int64), np.array(prob, dtype=dtype), np.array(bow, dtype=dtype),
                      dense=True)

    def _read_ngrams(self, k: int, n: int, index: Dict[str, int], tables: List[_Table], dtype,
                     order: int) -> _Table:
        V = len(index)
        key_parts: List[np.ndarray] = []
        prob = array.array(self.typecode)
        bow = array.array(self.typecode)
        cols = [array.array("q") for _ in range(k)]
        first_line = None
        chunk_first = None

        def flush() -> None:
            if not len(cols[0]):
                return
            ids = [np.frombuffer(c, dtype=np.int64) for c in cols]
            rows = ids[0]
            for j in range(2, k):  # rows of the prefixes of order j
                rows = tables[j - 1].rows(rows * V + ids[j - 1])
                bad = np.flatnonzero(rows < 0)
                if len(bad):
                    i = int(bad[0])
                    raise self.error(f"the {k}-gram's prefix of order {j} is not among the {j}-grams (ARPA files "
                                     "must list every n-gram's prefix)", line=chunk_first + i)
            key_parts.append(rows * V + ids[k - 1])
            cols[:] = [array.array("q") for _ in range(k)]  # the NumPy views keep the old buffers

        for lineno, line in self._section_lines(k, n):
            if first_line is None:
                first_line = lineno
            if chunk_first is None or not len(cols[0]):
                chunk_first = lineno
            p, words, b = self._parse(line, k, order)
            for j, w in enumerate(words):
                i = index.get(w)
                if i is None:
                    raise self.error(f"word {w!r} of a {k}-gram is not among the 1-grams")
                cols[j].append(i)
            prob.append(p)
            bow.append(b)
            if len(cols[0]) >= _CHUNK:
                flush()
        flush()
        keys = np.concatenate(key_parts) if key_parts else np.zeros(0, dtype=np.int64)
        key_parts.clear()
        perm = np.argsort(keys, kind="stable")
        keys = keys[perm]
        dup = np.flatnonzero(keys[1:] == keys[:-1])
        if len(dup):
            raise self.error(f"duplicate {k}-gram", line=first_line + int(perm[dup[0] + 1]))
        prob_a = np.frombuffer(prob, dtype=dtype)[perm]
        bow_a = np.frombuffer(bow, dtype=dtype)[perm]
        return _Table(keys, prob_a, bow_a)


def read_arpa_vocabulary(path: str) -> List[Tuple[str, int]]:
    """The words of an ARPA file's 1-gram section with their line numbers (reads only that section)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"language model not found: {path}")
    try:
        return _read_arpa_vocabulary(path)
    except UnicodeDecodeError:
        raise not_utf8_arpa_error(path) from None


def _read_arpa_vocabulary(path: str) -> List[Tuple[str, int]]:
    out: List[Tuple[str, int]] = []
    with open_text(path) as fh:
        state = 0
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if state == 0:
                state = 1 if line == "\\1-grams:" else 0
                continue
            if not line or line.startswith("\\"):
                return out
            parts = line.split()
            if len(parts) not in (2, 3):
                raise ARPAError(f"{path}:{lineno}: a 1-gram line needs a log10 probability, a word and an optional "
                                f"backoff; got {line!r}")
            out.append((parts[1], lineno))
    if state == 0:
        raise ARPAError(f"{path}: no \\1-grams: section: not an ARPA file")
    return out


# ----------------------------------------------------------------------------------------------- CLI


def _iter_text(paths: Sequence[str], uppercase: bool) -> Iterator[Tuple[List[str], str, int]]:
    """(words, file, line) of every non-empty transcript line: ``*.trans.txt`` (first field = utterance id, found
    recursively in directories), otherwise one sentence per line (``.wrd`` files, plain text)."""
    files: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                files.extend(os.path.join(root, f) for f in sorted(names) if f.endswith(".trans.txt"))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"transcripts not found: {p}")
    if not files:
        raise FileNotFoundError(f"no transcript files (*.trans.txt) under {', '.join(paths)}")
    for f in files:
        trans = f.endswith(".trans.txt")
        try:
            with open_text(f) as fh:
                for lineno, line in enumerate(fh, start=1):
                    words = line.split()
                    if trans:
                        words = words[1:]
                    if uppercase:
                        words = [w.upper() for w in words]
                    if words:
                        yield words, f, lineno
        except UnicodeDecodeError:
            raise not_utf8_error(f) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m common.ngram_lm",
        description="Build a word n-gram LM (ARPA, interpolated modified Kneser-Ney) and a letter lexicon from "
                    "transcripts, or a letter lexicon from an ARPA file's vocabulary (--from_arpa).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", metavar="PATH",
                     help="transcripts: .wrd files (one utterance per line), LibriSpeech *.trans.txt files or "
                          "directories holding them, or plain text (one sentence per line); .gz allowed")
    src.add_argument("--from_arpa", metavar="ARPA",
                     help="write only lexicon.txt: the spelling of every word of this ARPA file's vocabulary "
                          "(e.g. LibriSpeech 4-gram.arpa.gz)")
    parser.add_argument("--out_dir", required=True, help="writes lm.arpa and lexicon.txt here")
    parser.add_argument("--order", type=int, default=4, help="n-gram order")
    parser.add_argument("--dict", dest="dict_path", default=None,
                        help="letter dictionary (dict.ltr.txt); needed for lexicon.txt (every letter of every word "
                             "must be in it)")
    parser.add_argument("--uppercase", action="store_true", help="upper-case the transcripts first")
    parser.add_argument("--skip_invalid", action="store_true",
                        help="leave words with letters missing from the dictionary out of the lexicon (warning) "
                             "instead of stopping")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--progress_interval", type=float, default=PROGRESS_INTERVAL_S, metavar="SECONDS",
                        help="seconds between progress lines on stderr (reading the text, counting, estimating, "
                             "writing the ARPA file)")
    args = parser.parse_args(argv)
    t_start = time.monotonic()
    show = not args.quiet
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from common.ctc_decoder import LexiconError, letter_spelling

    try:
        symbols: Optional[List[str]] = None
        if args.dict_path:
            from common.data import Dictionary

            if not os.path.isfile(args.dict_path):
                raise FileNotFoundError(f"dictionary not found: {args.dict_path}")
            symbols = Dictionary.load(args.dict_path).symbols
        elif args.from_arpa:
            raise ValueError("--from_arpa writes a lexicon: give the letter dictionary with --dict")
        first_seen: Dict[str, Tuple[str, int]] = {}
        sentences: List[List[str]] = []
        if args.from_arpa:
            for w, lineno in read_arpa_vocabulary(args.from_arpa):
                if w not in (BOS, EOS, UNK):
                    first_seen.setdefault(w, (args.from_arpa, lineno))
        else:
            prog = _progress(show, args.progress_interval, desc="reading text", unit="lines")
            for words, f, lineno in _iter_text(args.text, args.uppercase):
                sentences.append(words)
                for w in words:
                    first_seen.setdefault(w, (f, lineno))
                if prog is not None and not len(sentences) % 4096:
                    prog.update_to(len(sentences))
            if prog is not None:
                prog.update_to(len(sentences))
                prog.close()
        # the lexicon is checked before anything is written: a failure leaves no partial result in out_dir
        lines, skipped = [], []
        if symbols is not None:
            for w in sorted(first_seen):
                try:
                    spelling = letter_spelling(w, symbols)
                except LexiconError as exc:
                    f, lineno = first_seen[w]
                    if args.skip_invalid:
                        skipped.append(w)
                        continue
                    raise LexiconError(f"{f}:{lineno}: word {w!r}: {exc} ({args.dict_path}); fix the text, use "
                                       "--uppercase, or --skip_invalid") from None
                lines.append(f"{w}\t{' '.join(spelling)} |\n")
        os.makedirs(args.out_dir, exist_ok=True)
        if not args.from_arpa:
            lm = NGramLM.estimate(sentences, order=args.order, progress=show, progress_interval=args.progress_interval)
            arpa = os.path.join(args.out_dir, "lm.arpa")
            lm.write_arpa(arpa, progress=show, progress_interval=args.progress_interval)
            print(f"{arpa}: order {lm.order}, n-grams per order {lm.counts()}, {len(sentences)} sentences, "
                  f"{len(lm.vocab) - 3} words; discounts (D1, D2, D3+) per order: "
                  + ", ".join("(" + ", ".join(f"{d:.3f}" for d in ds) + ")" for ds in lm.discounts or []))
        if symbols is not None:
            lex_path = os.path.join(args.out_dir, "lexicon.txt")
            with open(lex_path, "w", encoding="utf-8") as fh:
                fh.write("".join(lines))
            if skipped:
                LOG.warning("%d words left out of the lexicon (letters missing from %s), e.g. %s", len(skipped),
                            args.dict_path, ", ".join(skipped[:5]))
            print(f"{lex_path}: {len(lines)} words")
        if show:
            from common.progress import format_duration

            print(f"done in {format_duration(time.monotonic() - t_start)}", file=sys.stderr)
    except (ARPAError, LexiconError, ValueError, FileNotFoundError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
