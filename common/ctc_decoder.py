"""Lexicon-constrained CTC beam search with a word n-gram language model (pure Python/NumPy; optional flashlight).

    lexicon = Lexicon.load("lexicon.txt", dictionary.symbols)        # WORD<TAB>W O R D |
    lm = NGramLM.load_arpa("lm.arpa")                               # or None: lexicon only
    decoder = CTCBeamSearchDecoder(lexicon, dictionary.symbols, lm, BeamSearchConfig(lm_weight=0.8))
    hyp = decoder.decode(log_probs)                                 # T x V log-softmax of one utterance
    hyp.words, hyp.tokens, hyp.score

What is searched. The output is a sequence of lexicon words ``w_1 .. w_n``; its score is

    ln P_ctc(w_1 .. w_n | X) + lm_weight * ln P_lm(w_1 .. w_n </s>) + word_score * n

where ``P_ctc`` sums, over every CTC alignment (blank = index 0, a repeated symbol needs a blank between its two
emissions, as in "L L" of "HELLO"), the label sequences that spell the words with the word separator ``|`` after
each word: ``|* s(w_1) |+ s(w_2) |+ ... s(w_n) |*``. ``|`` is what the model emits between words (the ``.ltr``
targets end every word with it), so no implicit word boundary is accepted: two words need a ``|`` between them;
``|`` at the start, repeated ``|``, and the final ``|`` are optional (silence). A word completes when ``|``
follows its last letter, or at the end of the utterance when the letters so far spell a complete lexicon word.
Only lexicon words can be emitted; a partial word is always a prefix of a lexicon spelling (trie). (Lexicon-free
decoding, with an unknown-word score, is not implemented.)

How (``backend="python"``, the default). A CTC prefix beam search: a hypothesis is (committed words, position in
the lexicon trie) with two log-probabilities, ending in blank / ending in a symbol; identical hypotheses are merged
by summing (``merge="sum"``: exact sum over alignments) or by taking the maximum (``merge="max"``: Viterbi, the best
single alignment; what flashlight computes with ``log_add=False``). The LM is applied when a word completes (the
state of each hypothesis is kept, LM scores are memoised); ``</s>`` at the end. For pruning only, a hypothesis
inside a word is ranked with the best ``lm_weight * unigram + word_score`` of the words below its trie node
(flashlight's "smearing"), so that it competes fairly with hypotheses that have paid for their last word. Pruning
per frame: tokens whose log-probability is more than ``token_threshold`` below the frame's best (and beyond the
``token_beam`` best) are not expanded; then at most ``beam`` hypotheses within ``beam_threshold`` of the best
survive. A run of frames where only the blank survives the token pruning is processed in one step (peaky CTC
output: most frames). With an unlimited beam and no pruning the search is exact: tests compare it with brute-force
enumeration over word sequences, the CTC probabilities computed by ``torch.nn.functional.ctc_loss``.

``backend="flashlight"``: ``flashlight-text``'s ``LexiconDecoder`` with its KenLM (C++, much faster; optional
package). It merges hypotheses by LM state and takes the max over alignments unless ``merge="sum"``
(``log_add=True``); with ``merge="max"`` and a wide beam it returns the same best path as ``merge="max"`` here (tested).
Its LM scores are log10, so ``lm_weight`` is multiplied by ln(10) for it: ``lm_weight`` always weighs NATURAL-log LM
probabilities (fairseq/flashlight's ``--lm-weight 2`` is ``0.87`` here). Differences: it ends only with hypotheses at
a word boundary when there are any (``|`` emitted after the last word); ``token_threshold`` does not exist there.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from common.data.errors import read_text
from common.data.letters import letter_tokens

__all__ = ["LexiconError", "Lexicon", "BeamSearchConfig", "Hypothesis", "CTCBeamSearchDecoder", "letter_spelling",
           "flashlight_available", "build_decoder"]

NEG_INF = float("-inf")
LN10 = math.log(10.0)
SPECIAL = ("<s>", "<pad>", "</s>", "<unk>")
_PHONE = re.compile(r"^([A-Z]{2,3}|[A-Z]{1,3}[0-2])$")  # ARPAbet: AH0, HH, NG ...


class LexiconError(ValueError):
    """A bad lexicon (file and line in the message) or a word that cannot be spelled with the dictionary."""


def flashlight_available() -> bool:
    import importlib

    try:
        importlib.import_module("flashlight.lib.text.decoder")
        importlib.import_module("flashlight.lib.text.decoder.kenlm")
    except Exception:
        return False
    return True


def letter_spelling(word: str, symbols: Sequence[str], separator: str = "|") -> List[str]:
    """The letters of ``word`` as dictionary symbols: its letter tokens as the label files spell them (a character
    with its combining marks, ``common.data.letters``), a token the dictionary lacks split into its characters
    when those are symbols (a dictionary that counted characters); ``LexiconError`` for a letter it lacks."""
    known = set(symbols[len(SPECIAL):]) if list(symbols[:len(SPECIAL)]) == list(SPECIAL) else set(symbols)
    known.discard(separator)
    if not word:
        raise LexiconError("empty word")
    spelling: List[str] = []
    for token in letter_tokens(word):
        if token in known:
            spelling.append(token)
        elif all(ch in known for ch in token):
            spelling.extend(token)
        else:
            raise LexiconError(f"letter {token!r} is not in the dictionary")
    return spelling


# ----------------------------------------------------------------------------------------------- lexicon


class Lexicon:
    """Words, their spellings (dictionary indices, without the final ``|``) and the trie over the spellings.

    Trie: node 0 is the root (word boundary); ``children[n]`` maps a symbol index to a child node, ``token[n]`` is
    the symbol on the edge into ``n``, ``words[n]`` the indices of the words spelled by the path to ``n``.
    """

    def __init__(self, symbols: Sequence[str], separator: str = "|", source: str = "<memory>"):
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        if separator not in self.index:
            raise LexiconError(f"the dictionary has no word separator {separator!r}: lexicon decoding needs one")
        self.separator = self.index[separator]
        self.source = source
        self.words: List[str] = []
        self.word_index: Dict[str, int] = {}
        self.spellings: List[List[Tuple[int, ...]]] = []
        self.children: List[Dict[int, int]] = [{}]
        self.token: List[int] = [-1]
        self.node_words: List[Tuple[int, ...]] = [()]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.word_index

    def add(self, word: str, spelling: Sequence[str], where: str = "") -> None:
        """Add ``word`` spelled by the symbols ``spelling`` (a final ``|`` is dropped)."""
        loc = f"{where}: " if where else ""
        toks = list(spelling)
        if toks and toks[-1] == self.symbols[self.separator]:
            toks.pop()
        if not toks:
            raise LexiconError(f"{loc}word {word!r} has an empty spelling")
        ids = []
        for tok in toks:
            i = self.index.get(tok)
            if i is None or i < len(SPECIAL) and self.symbols[:len(SPECIAL)] == list(SPECIAL):
                hint = ""
                if _PHONE.match(tok):
                    hint = (" -- this looks like a phonetic lexicon (e.g. LibriSpeech's librispeech-lexicon.txt); "
                            "a letter CTC model needs letter spellings: python -m common.ngram_lm --from_arpa "
                            "LM.arpa --dict DICT --out_dir DIR writes one")
                raise LexiconError(f"{loc}the spelling of {word!r} uses {tok!r}, which is not a symbol of the "
                                   f"dictionary{hint}")
            if i == self.separator:
                raise LexiconError(f"{loc}the spelling of {word!r} has the word separator inside the word")
            ids.append(i)
        spelling_t = tuple(ids)
        w = self.word_index.get(word)
        if w is None:
            w = self.word_index[word] = len(self.words)
            self.words.append(word)
            self.spellings.append([])
        if spelling_t in self.spellings[w]:
            return
        self.spellings[w].append(spelling_t)
        node = 0
        for i in spelling_t:
            child = self.children[node].get(i)
            if child is None:
                child = len(self.children)
                self.children[node][i] = child
                self.children.append({})
                self.token.append(i)
                self.node_words.append(())
            node = child
        self.node_words[node] = self.node_words[node] + (w,)

    @classmethod
    def load(cls, path: str, symbols: Sequence[str], separator: str = "|") -> "Lexicon":
        """Read ``WORD<TAB>S P E L L I N G |`` lines (whitespace-separated symbols; fairseq/flashlight letter
        lexicon format). Several lines for one word are alternative spellings; blank lines are skipped."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"lexicon not found: {path}")
        lex = cls(symbols, separator, source=path)
        for lineno, line in enumerate(read_text(path).splitlines(), start=1):  # not UTF-8: DataError, file and line
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise LexiconError(f"{path}:{lineno}: expected 'WORD<TAB>S P E L L I N G |', got {line.rstrip()!r}")
            lex.add(parts[0], parts[1:], where=f"{path}:{lineno}")
        if not lex.words:
            raise LexiconError(f"{path}: the lexicon is empty")
        return lex

    @classmethod
    def from_words(cls, words: Iterable[str], symbols: Sequence[str], separator: str = "|") -> "Lexicon":
        """Letter lexicon: each word spelled by its characters."""
        lex = cls(symbols, separator)
        for w in words:
            try:
                lex.add(w, letter_spelling(w, symbols, separator))
            except LexiconError as exc:
                raise LexiconError(f"word {w!r}: {exc}") from None
        return lex


# ----------------------------------------------------------------------------------------------- settings


@dataclass
class BeamSearchConfig:
    """Beam-search settings.

    Attributes:
        beam: hypotheses kept after each frame.
        beam_threshold: hypotheses scoring more than this below the best are dropped (natural log).
        token_beam: at most this many symbols expanded per frame (the most likely; None: all).
        token_threshold: symbols whose log-probability is more than this below the frame's best are not expanded
            (python backend only; ``inf``: none pruned).
        lm_weight: weight of the NATURAL-log LM probability of each word and of ``</s>``.
        word_score: added per emitted word (positive: longer outputs).
        merge: ``"sum"`` (CTC: sum over alignments) or ``"max"`` (best alignment only).
        backend: ``"python"`` (ours, always available) or ``"flashlight"`` (``flashlight-text``).
    """

    beam: int = 50
    beam_threshold: float = 25.0
    token_beam: Optional[int] = None
    token_threshold: float = 10.0
    lm_weight: float = 0.87
    word_score: float = 0.0
    merge: str = "sum"
    backend: str = "python"

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")
        if self.token_beam is not None and self.token_beam < 1:
            raise ValueError(f"token_beam must be >= 1, got {self.token_beam}")
        if not self.beam_threshold > 0 or not self.token_threshold > 0:
            raise ValueError("beam_threshold and token_threshold must be positive")
        if not (math.isfinite(self.lm_weight) and math.isfinite(self.word_score)):
            raise ValueError(f"lm_weight and word_score must be finite numbers, got {self.lm_weight} and "
                             f"{self.word_score}")
        if self.merge not in ("sum", "max"):
            raise ValueError(f"merge must be 'sum' or 'max', got {self.merge!r}")
        if self.backend not in ("python", "flashlight"):
            raise ValueError(f"backend must be 'python' or 'flashlight', got {self.backend!r}")


@dataclass
class Hypothesis:
    """A decoded utterance: ``words``; ``tokens`` = their spellings, each followed by ``|`` (the ``.ltr``
    convention); ``score`` = the search score (acoustic + weighted LM + word scores)."""

    words: List[str] = field(default_factory=list)
    tokens: List[int] = field(default_factory=list)
    score: float = NEG_INF

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


# ----------------------------------------------------------------------------------------------- decoder


class CTCBeamSearchDecoder:
    """Lexicon-constrained CTC beam search (module docstring). ``lm``: an :class:`common.ngram_lm.NGramLM` or any
    object with ``word_id``, ``start_state``, ``null_state``, ``score_id(state, id) -> (state, ln p)`` and
    ``final_score``; None for lexicon-only decoding (word_score still applies). ``lm_path``: the LM file for the
    flashlight backend, which reads it with KenLM itself (ARPA or KenLM binary; ``lm`` may then be None)."""

    def __init__(self, lexicon: Lexicon, symbols: Sequence[str], lm=None, config: Optional[BeamSearchConfig] = None,
                 blank: int = 0, lm_path: Optional[str] = None):
        self.lexicon = lexicon
        self.symbols = list(symbols)
        if self.symbols != lexicon.symbols:
            raise ValueError("the lexicon was built for another dictionary")
        self.lm = lm
        self.config = config or BeamSearchConfig()
        self.blank = blank
        self.separator = lexicon.separator
        self.lm_ids = [lm.word_id(w) for w in lexicon.words] if lm is not None else None
        self.lookahead = self._smear()
        self._fl = None
        if self.config.backend == "flashlight":
            self._fl = _FlashlightBackend(self, lm_path)

    def _smear(self) -> List[float]:
        """Per trie node, the best score a word below it can add (``lm_weight`` x unigram ln p + ``word_score``):
        added to the ranking of hypotheses inside a word so that they compete fairly with hypotheses that have just
        paid for a word (flashlight's ``SmearingMode.MAX``). Only pruning uses it; final scores do not."""
        lex, cfg = self.lexicon, self.config
        n = len(lex.children)
        if self.lm is not None:
            null = self.lm.null_state()
            word_best = [cfg.lm_weight * self.lm.score_id(null, i)[1] + cfg.word_score for i in self.lm_ids]
        else:
            word_best = [cfg.word_score] * len(lex.words)
        best = [NEG_INF] * n
        for node in range(n - 1, 0, -1):  # children have larger ids than their parents
            b = max((word_best[w] for w in lex.node_words[node]), default=NEG_INF)
            for child in lex.children[node].values():
                b = max(b, best[child])
            best[node] = b
        best[0] = 0.0
        return best

    def oov_words(self) -> List[str]:
        """Lexicon words the LM does not know (scored as ``<unk>``)."""
        if self.lm is None:
            return []
        return [w for w in self.lexicon.words if w not in self.lm]

    def decode(self, log_probs) -> Hypothesis:
        """Best hypothesis for one utterance; ``log_probs``: T x V log-softmax (NumPy array or torch tensor)."""
        if hasattr(log_probs, "detach"):
            log_probs = log_probs.detach().float().cpu().numpy()
        lp = np.asarray(log_probs)
        if lp.ndim != 2 or lp.shape[1] != len(self.symbols):
            raise ValueError(f"expected T x {len(self.symbols)} log-probabilities, got shape {lp.shape}")
        if lp.shape[0] == 0:
            return Hypothesis(score=0.0)
        if np.isnan(lp).any():
            raise ValueError("the log-probabilities contain NaN")
        if self._fl is not None:
            return self._fl.decode(lp)
        return self._decode_python(lp.astype(np.float64, copy=False))

    # ---------------------------------------------------------------------------------------------- python
    def _allowed(self) -> np.ndarray:
        """Symbols the search can use: the blank, the separator and the letters of the lexicon."""
        ok = np.zeros(len(self.symbols), dtype=bool)
        ok[[self.blank, self.separator]] = True
        ok[[t for t in self.lexicon.token[1:]]] = True
        return ok

    def _frame(self, row: np.ndarray, cols: Sequence[int]):
        d = {int(c): float(row[c]) for c in cols if row[c] > NEG_INF}
        letters = [(c, v) for c, v in d.items() if c != self.blank and c != self.separator]
        return (d.get(self.blank), d.get(self.separator), letters, d)

    def _frames(self, lp: np.ndarray):
        """Per-frame surviving symbols: for every frame either None (only the blank survives) or
        (blank lp | None, separator lp | None, [(letter, lp), ...], {symbol: lp})."""
        cfg = self.config
        T, V = lp.shape
        allowed = self._allowed()
        masked = np.where(allowed[None, :], lp, -np.inf)
        keep = masked >= (masked.max(axis=1) - cfg.token_threshold)[:, None]
        keep &= allowed[None, :]
        if cfg.token_beam is not None and cfg.token_beam < V:
            top = np.argpartition(-masked, cfg.token_beam - 1, axis=1)[:, :cfg.token_beam]
            mask = np.zeros_like(keep)
            np.put_along_axis(mask, top, True, axis=1)
            keep &= mask
        counts = keep.sum(axis=1)
        blank_only = ((counts == 1) & keep[:, self.blank]).tolist()
        rows, cols = np.nonzero(keep)
        ends = np.cumsum(counts).tolist()
        cols_l = cols.tolist()
        frames = []
        start = 0
        for t in range(T):
            end = ends[t]
            frames.append(None if blank_only[t] else self._frame(lp[t], cols_l[start:end]))
            start = end
        return frames, lp[:, self.blank].tolist(), np.flatnonzero(allowed).tolist()

    def _decode_python(self, lp: np.ndarray) -> Hypothesis:
        cfg = self.config
        lex = self.lexicon
        children, token, node_words = lex.children, lex.token, lex.node_words
        NN = len(children)
        combine = _logaddexp if cfg.merge == "sum" else max
        beam_size, beam_thr = cfg.beam, cfg.beam_threshold
        lm, lm_ids = self.lm, self.lm_ids
        lmw, wsc = cfg.lm_weight, cfg.word_score
        look = self.lookahead
        frames, blank_lp, allowed = self._frames(lp)
        T = len(frames)

        # committed word histories: id -> parent, word, LM state, cumulative LM + word score
        h_parent: List[int] = [-1]
        h_word: List[int] = [-1]
        h_state: List[object] = [lm.start_state() if lm is not None else None]
        h_score: List[float] = [0.0]
        h_index: Dict[Tuple[int, int], int] = {}

        def extend(hist: int, w: int) -> int:
            h2 = h_index.get((hist, w))
            if h2 is None:
                h2 = h_index[(hist, w)] = len(h_parent)
                h_parent.append(hist)
                h_word.append(w)
                if lm is not None:
                    state, lpw = lm.score_id(h_state[hist], lm_ids[w])
                    h_state.append(state)
                    h_score.append(h_score[hist] + lmw * lpw + wsc)
                else:
                    h_state.append(None)
                    h_score.append(h_score[hist] + wsc)
            return h2

        def add(new: Dict[int, List[float]], k: int, v: float) -> None:  # v into "ends in a symbol" of k
            e = new.get(k)
            if e is None:
                new[k] = [NEG_INF, v, NEG_INF]
            else:
                e[1] = combine(e[1], v)

        def step(beam: Dict[int, List[float]], frame) -> Dict[int, List[float]]:
            lb, ls, letters, fd = frame
            n_letters = len(letters)
            new: Dict[int, List[float]] = {}
            get = new.get
            for key, (pb, pnb, tot) in beam.items():
                node = key % NN
                if lb is not None:
                    e = get(key)
                    if e is None:
                        new[key] = [tot + lb, NEG_INF, NEG_INF]
                    else:
                        e[0] = combine(e[0], tot + lb)
                if node == 0:  # word boundary: '|' is silence, letters start a word
                    if ls is not None:
                        add(new, key, tot + ls)
                    ch = children[0]
                    for c, lc in letters:
                        child = ch.get(c)
                        if child is not None:
                            k2 = key + child
                            e = get(k2)
                            if e is None:
                                new[k2] = [NEG_INF, tot + lc, NEG_INF]
                            else:
                                e[1] = combine(e[1], tot + lc)
                    continue
                last = token[node]
                lr = fd.get(last)
                if lr is not None and pnb != NEG_INF:  # the last letter repeated: same hypothesis
                    add(new, key, pnb + lr)
                ch = children[node]
                if ch:
                    base = key - node
                    if len(ch) < n_letters:
                        pairs = [(c, child, fd.get(c)) for c, child in ch.items()]
                    else:
                        pairs = [(c, ch.get(c), lc) for c, lc in letters]
                    for c, child, lc in pairs:
                        if child is None or lc is None:
                            continue
                        if c == last:  # a doubled letter needs a blank in between
                            if pb == NEG_INF:
                                continue
                            v = pb + lc
                        else:
                            v = tot + lc
                        k2 = base + child
                        e = get(k2)
                        if e is None:
                            new[k2] = [NEG_INF, v, NEG_INF]
                        else:
                            e[1] = combine(e[1], v)
                if ls is not None:
                    ws = node_words[node]
                    if ws:
                        hist = key // NN
                        v = tot + ls
                        for w in ws:
                            add(new, extend(hist, w) * NN, v)
            return new

        # beam: key = hist * NN + node -> [ln p ending in blank, ln p ending in a symbol, their combination]
        beam: Dict[int, List[float]] = {0: [0.0, NEG_INF, 0.0]}
        t = 0
        while t < T:
            frame = frames[t]
            if frame is None:  # only the blank survives: every hypothesis moves to "ends in blank"
                s = 0.0
                while t < T and frames[t] is None:
                    s += blank_lp[t]
                    t += 1
                for v in beam.values():
                    v[0] = v[2] = v[2] + s
                    v[1] = NEG_INF
                continue
            new = step(beam, frame)
            if not new:  # token pruning left no way forward: expand every symbol for this frame
                new = step(beam, self._frame(lp[t], allowed))
            t += 1
            scored = []
            for k, v in new.items():
                pb, pnb = v[0], v[1]
                tot = pnb if pb == NEG_INF else pb if pnb == NEG_INF else combine(pb, pnb)
                v[2] = tot
                scored.append((tot + h_score[k // NN] + look[k % NN], k))
            scored.sort(reverse=True)
            del scored[beam_size:]
            cutoff = scored[0][0] - beam_thr
            beam = {k: new[k] for s, k in scored if s >= cutoff}

        # end of utterance: complete words only, then </s>
        def final(hist: int) -> float:
            return lmw * lm.final_score(h_state[hist]) if lm is not None else 0.0

        ends: Dict[int, float] = {}  # word history -> total (with and without a final '|' are merged)
        for key in sorted(beam):
            tot = beam[key][2]
            hist, node = divmod(key, NN)
            if node == 0:
                cands: Iterable[int] = (hist,)
            else:
                cands = [extend(hist, w) for w in node_words[node]]
            for h in cands:
                ends[h] = combine(ends.get(h, NEG_INF), tot)
        best_score, best_hist = NEG_INF, -1
        for h, tot in ends.items():
            s = tot + h_score[h] + final(h)
            if s > best_score:
                best_score, best_hist = s, h
        if best_hist < 0:  # no hypothesis ends on a complete word: drop the partial word of the best
            key = max(beam, key=lambda k: (beam[k][2] + h_score[k // NN], -k))
            hist = key // NN
            best_score = beam[key][2] + h_score[hist] + final(hist)
            best_hist = hist
        words: List[int] = []
        h = best_hist
        while h > 0:
            words.append(h_word[h])
            h = h_parent[h]
        words.reverse()
        return self._hypothesis(words, best_score)

    def _hypothesis(self, word_ids: Sequence[int], score: float) -> Hypothesis:
        lex = self.lexicon
        tokens: List[int] = []
        for w in word_ids:
            tokens.extend(lex.spellings[w][0])
            tokens.append(self.separator)
        return Hypothesis(words=[lex.words[w] for w in word_ids], tokens=tokens, score=float(score))


# ----------------------------------------------------------------------------------------------- flashlight


class _FlashlightBackend:
    """flashlight-text's LexiconDecoder + KenLM over the same lexicon (see the module docstring)."""

    def __init__(self, owner: CTCBeamSearchDecoder, lm_path: Optional[str]):
        try:
            from flashlight.lib.text.decoder import (CriterionType, LexiconDecoder, LexiconDecoderOptions,
                                                     SmearingMode, Trie, ZeroLM)
            from flashlight.lib.text.dictionary import Dictionary as FlDictionary
        except Exception as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("the flashlight backend needs the package flashlight-text "
                               f"(pip install flashlight-text): {exc}") from None
        cfg = owner.config
        lex = owner.lexicon
        self.owner = owner
        if owner.lm is not None and lm_path is None:
            raise ValueError("the flashlight backend reads the LM itself: give lm_path (the ARPA file)")
        self.word_list = list(lex.words) + ["<unk>"] if "<unk>" not in lex else list(lex.words)
        self.unk_word = self.word_list.index("<unk>")
        word_dict = FlDictionary(self.word_list)
        if lm_path is not None:
            from flashlight.lib.text.decoder.kenlm import KenLM

            self.lm = KenLM(lm_path, word_dict)
        else:
            self.lm = ZeroLM()
        V = len(owner.symbols)
        self.trie = Trie(V, owner.separator)
        start = self.lm.start(False)
        for w, spellings in enumerate(lex.spellings):
            _, score = self.lm.score(start, w)
            for sp in spellings:
                self.trie.insert(list(sp) + [owner.separator], w, score)
        self.trie.smear(SmearingMode.MAX)
        self.options = LexiconDecoderOptions(
            beam_size=cfg.beam, beam_size_token=cfg.token_beam or V, beam_threshold=cfg.beam_threshold,
            lm_weight=cfg.lm_weight * LN10, word_score=cfg.word_score, unk_score=NEG_INF, sil_score=0.0,
            log_add=cfg.merge == "sum", criterion_type=CriterionType.CTC)
        self.decoder = LexiconDecoder(self.options, self.trie, self.lm, owner.separator, owner.blank,
                                      self.unk_word, [], False)

    def decode(self, lp: np.ndarray) -> Hypothesis:
        em = np.ascontiguousarray(lp, dtype=np.float32)
        T, V = em.shape
        results = self.decoder.decode(em.ctypes.data, T, V)
        if not results:
            return Hypothesis()
        best = results[0]
        words = [w for w in best.words if 0 <= w < len(self.owner.lexicon.words)]
        return self.owner._hypothesis(words, best.score)


def build_decoder(lexicon_path: str, symbols: Sequence[str], lm_path: Optional[str] = None,
                  config: Optional[BeamSearchConfig] = None, blank: int = 0,
                  progress: bool = False) -> CTCBeamSearchDecoder:
    """Load the lexicon (and the ARPA LM for the python backend, with a progress line when ``progress``;
    flashlight's KenLM reads ``lm_path`` itself) and build the decoder."""
    from common.ngram_lm import NGramLM

    config = config or BeamSearchConfig()
    lexicon = Lexicon.load(lexicon_path, symbols)
    lm = None
    if lm_path and config.backend == "python":
        lm = NGramLM.load_arpa(lm_path, progress=progress)
    return CTCBeamSearchDecoder(lexicon, symbols, lm, config, blank=blank, lm_path=lm_path)
