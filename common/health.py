"""Training health checks (PITFALLS.md #1, #2, #11): non-finite loss, pretraining collapse, blank-only CTC output.

Each check takes a metric dict (the un-prefixed keys of a finished scope, e.g. ``loss``, ``accuracy``,
``code_perplexity``, ``prob_perplexity``, ``grad_norm``, ``empty_preds``, ``nsentences``) and the update number, and
returns :class:`HealthIssue` objects carrying a human-readable reason, the update and the configured action
("stop" | "warn"). The trainer acts on them (``stop``: save, then end the run); nothing here raises or prints.

Collapse signs (pre-training): code (or prob) perplexity near its floor G = ``latent_groups`` (2: one code per
group used), contrastive accuracy near 1 in the first updates (trivial solution), a vanishing gradient norm.
Perplexities range over [G, G*V] = [2, 640] for the Base quantizer (REFERENCE-QUIRKS §10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["HealthIssue", "HealthConfig", "check_finite_loss", "check_pretrain_collapse", "check_ctc_blank_only",
           "is_blank_only", "HealthMonitor"]

ACTIONS = ("stop", "warn")


@dataclass(frozen=True)
class HealthIssue:
    kind: str            # "non_finite_loss" | "collapse_perplexity" | "collapse_accuracy" | "vanishing_grad" | "blank_only"
    reason: str
    update: Optional[int]
    action: str = "warn"


@dataclass(frozen=True)
class HealthConfig:
    """Thresholds and actions.

    Attributes:
        latent_groups: quantizer groups G (``--latent_groups``, 2).
        perplexity_floor_ratio: collapse when code/prob perplexity <= ratio * G (default 1.5 -> 3.0 for G=2).
        early_updates: horizon of the "accuracy near 1 early" check (default 10000 updates).
        max_early_accuracy: accuracy >= this within ``early_updates`` is a collapse sign (default 0.99).
        min_grad_norm: a finite grad norm below this is "vanishing" (default 0 = check off).
        min_contrastive_loss: a contrastive loss term (``loss_0``, bits per masked frame) at or below this is the
            loss floor of a collapsed run (default 0.01 bits, i.e. the positive beats 100 negatives with
            probability > 99.3 %; healthy LibriSpeech runs stay above 1 bit; 0 = check off).
        blank_only_fraction: fraction of validation utterances with an empty greedy prediction that counts as
            blank-only output (default 1.0 = all of them).
        patience: consecutive checks a collapse/blank-only sign must persist before it is reported (default 3);
            non-finite losses are reported at once.
        on_non_finite / on_collapse / on_blank_only: "stop" | "warn".
    """

    latent_groups: int = 2
    perplexity_floor_ratio: float = 1.5
    early_updates: int = 10000
    max_early_accuracy: float = 0.99
    min_grad_norm: float = 0.0
    min_contrastive_loss: float = 0.01
    blank_only_fraction: float = 1.0
    patience: int = 3
    on_non_finite: str = "stop"
    on_collapse: str = "warn"
    on_blank_only: str = "warn"

    def __post_init__(self) -> None:
        for a in (self.on_non_finite, self.on_collapse, self.on_blank_only):
            if a not in ACTIONS:
                raise ValueError(f"health action must be one of {ACTIONS}, got {a!r}")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")


def _num(metrics: Mapping[str, Any], key: str) -> Optional[float]:
    v = metrics.get(key)
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _is_loss_term(key: str) -> bool:
    """``loss_0``, ``loss_1``, ...: the terms of a multi-term loss (``loss_scale`` is not one)."""
    return key.startswith("loss_") and key != "loss_scale"


def check_finite_loss(metrics: Mapping[str, Any], update: Optional[int], cfg: HealthConfig = HealthConfig()
                      ) -> List[HealthIssue]:
    """Non-finite ``loss`` / ``loss_<i>`` values (``loss_scale`` excluded)."""
    bad = [f"{k}={metrics[k]}" for k in metrics
           if (k == "loss" or _is_loss_term(k)) and _num(metrics, k) is not None and not math.isfinite(_num(metrics, k))]
    if not bad:
        return []
    return [HealthIssue("non_finite_loss", f"non-finite loss at update {update}: {', '.join(bad)}", update,
                        cfg.on_non_finite)]


def check_pretrain_collapse(metrics: Mapping[str, Any], update: Optional[int],
                            cfg: HealthConfig = HealthConfig()) -> List[HealthIssue]:
    """Collapse signs of contrastive pre-training (one reading; see :class:`HealthMonitor` for persistence)."""
    issues = []
    floor = cfg.perplexity_floor_ratio * cfg.latent_groups
    for key in ("code_perplexity", "prob_perplexity"):
        v = _num(metrics, key)
        if v is not None and math.isfinite(v) and v <= floor:
            issues.append(HealthIssue(
                "collapse_perplexity",
                f"possible codebook collapse at update {update}: {key}={v:.3f} <= {floor:g} "
                f"({cfg.perplexity_floor_ratio:g} x {cfg.latent_groups} groups; only ~one code per group in use)",
                update, cfg.on_collapse))
            break
    acc = _num(metrics, "accuracy")
    if acc is not None and update is not None and update <= cfg.early_updates and acc >= cfg.max_early_accuracy:
        issues.append(HealthIssue(
            "collapse_accuracy",
            f"possible collapse at update {update}: contrastive accuracy {acc:.4f} >= {cfg.max_early_accuracy:g} "
            f"within the first {cfg.early_updates} updates (trivial solution)", update, cfg.on_collapse))
    contrastive = _num(metrics, "loss_0")
    if contrastive is None and not any(_is_loss_term(k) for k in metrics):
        contrastive = _num(metrics, "loss")  # a one-term loss is logged without loss_0: it is the contrastive term
    if (cfg.min_contrastive_loss > 0 and contrastive is not None and math.isfinite(contrastive)
            and contrastive <= cfg.min_contrastive_loss):
        issues.append(HealthIssue(
            "collapse_loss_floor",
            f"possible collapse at update {update}: contrastive loss {contrastive:.4g} bits <= "
            f"{cfg.min_contrastive_loss:g} (the task became trivial: check the masking and the quantizer)",
            update, cfg.on_collapse))
    gn = _num(metrics, "grad_norm")
    if cfg.min_grad_norm > 0 and gn is not None and math.isfinite(gn) and gn < cfg.min_grad_norm:
        issues.append(HealthIssue(
            "vanishing_grad", f"vanishing gradient norm at update {update}: {gn:.3g} < {cfg.min_grad_norm:g}",
            update, cfg.on_collapse))
    return issues


def is_blank_only(frame_ids: Any, blank: int = 0) -> bool:
    """True when every frame-wise argmax id is the blank."""
    ids = frame_ids.tolist() if hasattr(frame_ids, "tolist") else list(frame_ids)
    return all(int(i) == blank for i in ids)


def check_ctc_blank_only(metrics: Mapping[str, Any], update: Optional[int], cfg: HealthConfig = HealthConfig()
                         ) -> List[HealthIssue]:
    """Blank-only CTC predictions: ``empty_preds / nsentences >= blank_only_fraction`` (keys of
    :meth:`common.metrics.WerStats.log_dict` plus the criterion's ``nsentences``)."""
    empty, n = _num(metrics, "empty_preds"), _num(metrics, "nsentences")
    if empty is None or not n:
        return []
    frac = empty / n
    if frac + 1e-12 < cfg.blank_only_fraction:
        return []
    return [HealthIssue(
        "blank_only",
        f"CTC predictions hold no word (blanks or word separators only) for {100 * frac:.1f}% of the utterances "
        f"at update {update}: check the "
        f"dictionary (blank 0, pad 1, eos 2, unk 3), the learning-rate schedule and --freeze_finetune_updates",
        update, cfg.on_blank_only)]


@dataclass
class HealthMonitor:
    """Runs the checks of a mode ("pretrain" | "finetune") and applies ``patience`` to collapse/blank-only signs.

    ``check(metrics, update)`` returns the issues to act on now; ``state_dict``/``load_state_dict`` keep the
    persistence counters across a resume.
    """

    mode: str = "pretrain"
    cfg: HealthConfig = field(default_factory=HealthConfig)
    streaks: Dict[str, int] = field(default_factory=dict)

    def check(self, metrics: Mapping[str, Any], update: Optional[int]) -> List[HealthIssue]:
        issues = list(check_finite_loss(metrics, update, self.cfg))
        persistent = []
        if self.mode == "pretrain":
            persistent += check_pretrain_collapse(metrics, update, self.cfg)
        persistent += check_ctc_blank_only(metrics, update, self.cfg)
        seen = {i.kind for i in persistent}
        for kind in list(self.streaks):
            if kind not in seen:
                del self.streaks[kind]
        for issue in persistent:
            self.streaks[issue.kind] = self.streaks.get(issue.kind, 0) + 1
            n = self.streaks[issue.kind]
            if n >= self.cfg.patience:
                issues.append(replace(issue, reason=f"{issue.reason} [{n} consecutive checks]"))
        return issues

    def state_dict(self) -> Dict[str, Any]:
        return {"streaks": dict(self.streaks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.streaks = dict(state.get("streaks", {}))
