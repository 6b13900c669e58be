"""Oracle tests for common/health.py found by mutation testing: the documented thresholds at their boundaries, both
perplexities, a zero-utterance validation and the action each collapse sign carries.

Oracle: the HealthConfig contract (perplexity <= ratio * G; accuracy >= max within the first ``early_updates``
updates, inclusive; contrastive loss at or below the floor; grad norm strictly below the minimum; blank-only
fraction >= the configured one), with hand-picked numbers exactly on each boundary."""

import pytest

from common.health import HealthConfig, HealthMonitor, check_ctc_blank_only, check_pretrain_collapse


def kinds(metrics, update, cfg=HealthConfig()):
    return [i.kind for i in check_pretrain_collapse(metrics, update, cfg)]


def test_perplexity_exactly_at_the_floor_is_collapse_and_prob_perplexity_counts_too():
    # floor = 1.5 x 2 groups = 3.0, inclusive
    assert kinds({"code_perplexity": 3.0}, 10) == ["collapse_perplexity"]
    assert kinds({"code_perplexity": 3.0001}, 10) == []
    # a healthy code perplexity does not hide a collapsed prob perplexity (either one is the sign)
    assert kinds({"code_perplexity": 300.0, "prob_perplexity": 2.5}, 10) == ["collapse_perplexity"]
    # G = 8 groups: floor 12
    assert kinds({"prob_perplexity": 12.0}, 10, HealthConfig(latent_groups=8)) == ["collapse_perplexity"]


def test_early_accuracy_boundaries_are_inclusive():
    cfg = HealthConfig(early_updates=100, max_early_accuracy=0.75)
    assert kinds({"accuracy": 0.75}, 100, cfg) == ["collapse_accuracy"]   # at both limits
    assert kinds({"accuracy": 0.75}, 101, cfg) == []                      # past the early horizon
    assert kinds({"accuracy": 0.7499}, 50, cfg) == []


def test_contrastive_floor_is_inclusive_and_grad_norm_minimum_is_strict():
    cfg = HealthConfig(min_contrastive_loss=0.25, min_grad_norm=0.5)
    assert kinds({"loss_0": 0.25}, 10, cfg) == ["collapse_loss_floor"]    # "at or below"
    assert kinds({"loss_0": 0.26}, 10, cfg) == []
    assert kinds({"loss_0": 1.0, "grad_norm": 0.5}, 10, cfg) == []         # "below": 0.5 is not
    assert kinds({"loss_0": 1.0, "grad_norm": 0.4999}, 10, cfg) == ["vanishing_grad"]


def test_vanishing_gradient_carries_the_collapse_action():
    """A vanishing gradient is a collapse sign (on_collapse), not a non-finite loss (on_non_finite)."""
    cfg = HealthConfig(min_grad_norm=1.0, on_collapse="stop", on_non_finite="warn")
    issues = check_pretrain_collapse({"loss_0": 1.0, "grad_norm": 0.1}, 10, cfg)
    assert [(i.kind, i.action) for i in issues] == [("vanishing_grad", "stop")]
    cfg = HealthConfig(min_grad_norm=1.0, on_collapse="warn", on_non_finite="stop")
    assert check_pretrain_collapse({"loss_0": 1.0, "grad_norm": 0.1}, 10, cfg)[0].action == "warn"


def test_validation_without_utterances_reports_nothing():
    """0 empty predictions out of 0 utterances is no evidence of blank-only output (and no division by zero)."""
    assert check_ctc_blank_only({"empty_preds": 0, "nsentences": 0}, 10) == []
    mon = HealthMonitor("finetune", HealthConfig(patience=1))
    assert mon.check({"empty_preds": 0.0, "nsentences": 0.0, "loss": 1.0}, 10) == []


@pytest.mark.parametrize("empty,n,fraction,expected", [(4, 8, 0.5, True), (3, 8, 0.5, False), (8, 8, 1.0, True)])
def test_blank_only_fraction_is_inclusive(empty, n, fraction, expected):
    got = check_ctc_blank_only({"empty_preds": empty, "nsentences": n}, 1, HealthConfig(blank_only_fraction=fraction))
    assert bool(got) is expected
