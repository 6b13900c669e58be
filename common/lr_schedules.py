"""Learning-rate schedules of the reference's ``--lr_policy`` flag (REFERENCE.md §5.5).

Two policies exist, both pure functions of the (1-based) update number ``step``:

``poly`` (default; pre-training recipes)
    ``step <= Wu``: linear warm-up ``s0 + step/Wu * (lr - s0)``; ``Wu < step <= Wu+Hu``: hold at ``lr``;
    ``Wu+Hu < step <= Nu``: ``(lr - s1) * (1 - frac)**power + s1``; ``step > Nu``: ``s1``.
    Pre-training recipe: lr 5e-4 (large 5e-3), Wu 32000, Hu 0, s0 = s1 = 0, power 1.0, Nu 400000 (large 800000).

``exp`` (fine-tuning recipes; fairseq ``tri_stage``)
    warm-up as above, hold at ``lr`` until ``Wu+Hu``, then ``max(lr * exp(d * (min(step, Nu) - Wu - Hu)), s1)``
    with ``d = ln(--lr_exp_decay)`` if given, else ``d = ln(s1 / lr) / (Nu - Wu - Hu)``.
    Fine-tuning recipes: s0 = 0.01 lr, s1 = 0.05 lr, Wu = Nu/10, Hu = 4 Nu/10.

where lr = ``--lr``, s0 = ``--initial_lr_scale`` * lr, s1 = ``--final_lr_scale`` * lr, Wu = ``--warmup_updates``,
Hu = ``--hold_updates``, Nu = ``--max_update``, power = ``--lr_poly_power``.

Deviation (REFERENCE-QUIRKS Q11): the reference's ``poly`` computes the decay fraction from the end of the
warm-up, ``frac = (step - Wu) / (Nu - Wu)``, even when ``Hu > 0``, which makes the lr jump down at the end of the
hold.  We use ``frac = (step - Wu - Hu) / (Nu - Wu - Hu)`` (continuous; identical whenever ``Hu == 0``, i.e. in every
shipped recipe).  ``LRScheduleConfig(reproduce_q11=True)`` restores the reference formula.

Step semantics (REFERENCE-QUIRKS Q2): the reference sets the lr *after* each update for the next one and
initialises it with ``policy(1)``, so update ``k >= 2`` runs with ``policy(k - 1)`` and update 1 with ``policy(1)``.
:class:`LRScheduler` reproduces this by default (``lag=True``).  Skipped (overflowed) updates still advance the
schedule (Q4) because the trainer calls :meth:`LRScheduler.step` for every update number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Mapping, Optional

__all__ = [
    "LRScheduleConfig",
    "poly_lr",
    "exp_lr",
    "make_lr_policy",
    "LRScheduler",
]

LRPolicy = Callable[[int], float]


@dataclass(frozen=True)
class LRScheduleConfig:
    """Schedule settings; field names follow the reference flags (defaults = reference CLI defaults, §8.1).

    Attributes:
        lr_policy: ``--lr_policy`` in {"poly", "exp"}; default "poly".
        lr: peak lr ``--lr`` (first list element); default 5e-4 (base pre-train 5e-4, large 5e-3).
        max_update: ``--max_update`` Nu; default 400000.
        warmup_updates: ``--warmup_updates`` Wu; default 32000.
        hold_updates: ``--hold_updates`` Hu; default 0.
        initial_lr_scale: ``--initial_lr_scale``; default 0.0 (fine-tune recipes 0.01).
        final_lr_scale: ``--final_lr_scale``; default 0.0 (fine-tune recipes 0.05).
        lr_poly_power: ``--lr_poly_power``; default 1.0.
        lr_exp_decay: ``--lr_exp_decay`` per-update decay factor for ``exp``; None = derived from final_lr_scale.
        reproduce_q11: use the reference's poly decay fraction measured from the end of warm-up (Q11).
    """

    lr_policy: str = "poly"
    lr: float = 5e-4
    max_update: int = 400000
    warmup_updates: int = 32000
    hold_updates: int = 0
    initial_lr_scale: float = 0.0
    final_lr_scale: float = 0.0
    lr_poly_power: float = 1.0
    lr_exp_decay: Optional[float] = None
    reproduce_q11: bool = False

    def __post_init__(self) -> None:
        if self.lr_policy not in ("poly", "exp"):
            raise ValueError(f"--lr_policy must be 'poly' or 'exp', got {self.lr_policy!r}")
        if self.warmup_updates < 0 or self.hold_updates < 0:
            raise ValueError("--warmup_updates and --hold_updates must be >= 0")
        if self.lr_policy == "exp" and self.lr_exp_decay is None:
            if self.final_lr_scale <= 0:
                raise ValueError("--lr_policy exp without --lr_exp_decay requires --final_lr_scale > 0")
            if self.max_update - self.warmup_updates - self.hold_updates <= 0:
                raise ValueError("--lr_policy exp needs max_update > warmup_updates + hold_updates")
        if self.lr_exp_decay is not None and self.lr_exp_decay <= 0:
            raise ValueError("--lr_exp_decay must be > 0")

    @classmethod
    def tri_stage(cls, lr: float, max_update: int, **kw: Any) -> "LRScheduleConfig":
        """The fine-tuning recipes' schedule (§7.2): Wu = Nu/10, Hu = 4*(Nu/10) (integer shell arithmetic),
        init scale 0.01, final scale 0.05, ``exp`` policy."""
        wu = max_update // 10
        kw.setdefault("warmup_updates", wu)
        kw.setdefault("hold_updates", wu * 4)
        kw.setdefault("initial_lr_scale", 0.01)
        kw.setdefault("final_lr_scale", 0.05)
        return cls(lr_policy="exp", lr=lr, max_update=max_update, **kw)


def _warmup(step: int, lr: float, s0: float, warmup: int) -> float:
    return s0 + (step / warmup) * (lr - s0)


def poly_lr(
    step: int,
    lr: float,
    max_update: int,
    warmup_updates: int = 32000,
    hold_updates: int = 0,
    initial_lr_scale: float = 0.0,
    final_lr_scale: float = 0.0,
    power: float = 1.0,
    reproduce_q11: bool = False,
) -> float:
    """The ``poly`` policy at update ``step`` (>= 1). See the module docstring for the formula and Q11."""
    s0, s1 = initial_lr_scale * lr, final_lr_scale * lr
    if step <= warmup_updates:
        return _warmup(step, lr, s0, warmup_updates)
    if step <= warmup_updates + hold_updates:
        return lr
    if step > max_update:
        return s1
    if reproduce_q11:
        start, span = warmup_updates, max_update - warmup_updates
    else:
        start, span = warmup_updates + hold_updates, max_update - warmup_updates - hold_updates
    frac = (step - start) / span if span > 0 else 1.0
    return (lr - s1) * (1.0 - frac) ** power + s1


def exp_lr(
    step: int,
    lr: float,
    max_update: int,
    warmup_updates: int,
    hold_updates: int,
    initial_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
    lr_exp_decay: Optional[float] = None,
) -> float:
    """The ``exp`` (tri-stage) policy at update ``step`` (>= 1)."""
    s0, s1 = initial_lr_scale * lr, final_lr_scale * lr
    if step <= warmup_updates:
        return _warmup(step, lr, s0, warmup_updates)
    if step <= warmup_updates + hold_updates:
        return lr
    if lr_exp_decay is not None:
        d = math.log(lr_exp_decay)
    else:
        d = math.log(s1 / lr) / (max_update - warmup_updates - hold_updates)
    return max(lr * math.exp(d * (min(step, max_update) - warmup_updates - hold_updates)), s1)


def make_lr_policy(cfg: LRScheduleConfig) -> LRPolicy:
    """Return ``policy(step) -> lr`` for ``cfg`` (a pure function of the update number)."""
    if cfg.lr_policy == "poly":
        def policy(step: int) -> float:
            return poly_lr(step, cfg.lr, cfg.max_update, cfg.warmup_updates, cfg.hold_updates,
                           cfg.initial_lr_scale, cfg.final_lr_scale, cfg.lr_poly_power, cfg.reproduce_q11)
    else:
        def policy(step: int) -> float:
            return exp_lr(step, cfg.lr, cfg.max_update, cfg.warmup_updates, cfg.hold_updates,
                          cfg.initial_lr_scale, cfg.final_lr_scale, cfg.lr_exp_decay)
    return policy


class LRScheduler:
    """Sets the lr of every param group from a policy, with the reference's one-update lag (Q2).

    Usage by the trainer::

        sched = LRScheduler(optimizer, cfg)
        sched.begin(next_update=step + 1)       # at start-up / after resume (step = completed updates)
        ... run update k ...
        sched.step(k)                           # after update k (also when it was skipped for overflow, Q4)

    With ``lag=True`` (reference) update ``k`` runs with ``policy(max(1, k - 1))``; with ``lag=False`` with
    ``policy(k)``.
    """

    def __init__(self, optimizer: Any, cfg: LRScheduleConfig, lag: bool = True) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.lag = lag
        self.policy = make_lr_policy(cfg)
        self.completed_update = 0

    def lr_for_update(self, update: int) -> float:
        """The lr with which update number ``update`` (1-based) runs."""
        if update < 1:
            raise ValueError(f"update numbers start at 1, got {update}")
        return self.policy(max(1, update - 1) if self.lag else update)

    def _set(self, lr: float) -> None:
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def begin(self, next_update: Optional[int] = None) -> float:
        """Set the lr for ``next_update`` (default: the update after the last completed one); returns it."""
        if next_update is None:
            next_update = self.completed_update + 1
        self.completed_update = next_update - 1
        lr = self.lr_for_update(next_update)
        self._set(lr)
        return lr

    def step(self, completed_update: int) -> float:
        """Record that update ``completed_update`` finished and set the lr for the next one; returns it."""
        self.completed_update = completed_update
        lr = self.lr_for_update(completed_update + 1)
        self._set(lr)
        return lr

    @property
    def current_lr(self) -> float:
        return self.lr_for_update(self.completed_update + 1)

    def state_dict(self) -> Dict[str, Any]:
        return {"completed_update": self.completed_update, "lag": self.lag, "config": asdict(self.cfg)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the position (the config of the running job wins; a mismatch is allowed, e.g. a changed
        max_update). Sets the optimizer lr for the next update."""
        self.completed_update = int(state["completed_update"])
        self.lag = bool(state.get("lag", self.lag))
        self.begin(self.completed_update + 1)
