"""Health checks on hand-made metric dicts (PITFALLS #1, #2, #11)."""

import math

import pytest

from common.health import (
    HealthConfig,
    HealthMonitor,
    check_ctc_blank_only,
    check_finite_loss,
    check_pretrain_collapse,
    is_blank_only,
)


def test_non_finite_loss_reported_with_update_and_action():
    issues = check_finite_loss({"loss": float("nan"), "loss_scale": float("inf"), "ntokens": 10}, 123)
    assert len(issues) == 1
    i = issues[0]
    assert i.kind == "non_finite_loss" and i.update == 123 and i.action == "stop"
    assert "update 123" in i.reason and "loss=nan" in i.reason and "loss_scale" not in i.reason
    assert check_finite_loss({"loss": 3.2, "loss_0": 1.0, "loss_scale": math.inf}, 5) == []
    assert check_finite_loss({"loss_1": -math.inf}, 7)[0].kind == "non_finite_loss"


def test_collapse_signs():
    healthy = {"loss": 3.1, "accuracy": 0.35, "code_perplexity": 310.0, "prob_perplexity": 420.0, "grad_norm": 0.8}
    assert check_pretrain_collapse(healthy, 5000) == []
    collapsed = {"loss": 0.01, "accuracy": 0.999, "code_perplexity": 2.0, "prob_perplexity": 2.3, "grad_norm": 1e-9}
    kinds = [i.kind for i in check_pretrain_collapse(collapsed, 3000, HealthConfig(min_grad_norm=1e-6))]
    assert kinds == ["collapse_perplexity", "collapse_accuracy", "collapse_loss_floor", "vanishing_grad"]
    # accuracy near 1 late in training is not flagged as "early"
    assert [i.kind for i in check_pretrain_collapse({"accuracy": 0.995}, 50000)] == []
    # perplexity just above the floor 1.5 * 2 = 3 is fine
    assert check_pretrain_collapse({"code_perplexity": 3.5}, 10) == []
    msg = check_pretrain_collapse({"code_perplexity": 2.0}, 10)[0].reason
    assert "update 10" in msg and "code_perplexity=2.000" in msg


def test_contrastive_loss_floor():
    """PITFALLS 1: the contrastive term (loss_0, bits per masked frame) at its floor is a collapse sign at any update;
    a healthy value, the total loss alone, or the check switched off (0) are not."""
    assert [i.kind for i in check_pretrain_collapse({"loss_0": 0.004}, 80000)] == ["collapse_loss_floor"]
    assert check_pretrain_collapse({"loss_0": 1.7, "loss": 1.9}, 80000) == []
    assert check_pretrain_collapse({"loss": 0.2, "loss_0": 1.9, "loss_1": 0.1}, 80000) == []  # total vs term
    # a run with one loss term logs no loss_0 (REFERENCE 3.1): its loss is the contrastive term
    assert [i.kind for i in check_pretrain_collapse({"loss": 0.001, "loss_scale": 1.0}, 80000)] == [
        "collapse_loss_floor"]
    assert check_pretrain_collapse({"loss_0": 0.0}, 10, HealthConfig(min_contrastive_loss=0.0)) == []
    assert "0.004 bits" in check_pretrain_collapse({"loss_0": 0.004}, 7)[0].reason


def test_blank_only():
    assert is_blank_only([0, 0, 0]) and not is_blank_only([0, 4, 0])
    issue = check_ctc_blank_only({"empty_preds": 8, "nsentences": 8}, 2000)[0]
    assert issue.kind == "blank_only" and issue.update == 2000 and "100.0%" in issue.reason
    assert check_ctc_blank_only({"empty_preds": 7, "nsentences": 8}, 2000) == []
    assert check_ctc_blank_only({"empty_preds": 7, "nsentences": 8}, 1, HealthConfig(blank_only_fraction=0.8))
    assert check_ctc_blank_only({"nsentences": 8}, 1) == []


def test_monitor_patience_and_resume():
    mon = HealthMonitor("pretrain", HealthConfig(patience=2, on_collapse="stop"))
    bad = {"loss": 0.1, "code_perplexity": 2.0}
    assert mon.check(bad, 100) == []                       # first sighting: not yet
    assert mon.check({"code_perplexity": 50.0}, 200) == []  # streak broken
    assert mon.check(bad, 300) == []
    state = mon.state_dict()
    mon2 = HealthMonitor("pretrain", HealthConfig(patience=2, on_collapse="stop"))
    mon2.load_state_dict(state)
    issues = mon2.check(bad, 400)
    assert [(i.kind, i.action, i.update) for i in issues] == [("collapse_perplexity", "stop", 400)]
    # non-finite is immediate regardless of patience
    assert mon2.check({"loss": math.nan}, 401)[0].kind == "non_finite_loss"


def test_finetune_monitor_ignores_pretrain_signs():
    mon = HealthMonitor("finetune", HealthConfig(patience=1))
    assert mon.check({"accuracy": 1.0, "code_perplexity": 2.0, "loss": 1.0}, 10) == []
    assert mon.check({"empty_preds": 4, "nsentences": 4}, 10)[0].kind == "blank_only"


def test_invalid_action():
    with pytest.raises(ValueError):
        HealthConfig(on_collapse="explode")
