"""Oracle tests for common/optim.py's reference-state conversion found by mutation testing.

Oracles: REFERENCE.md §2.2 (mixed precision: ONE flat fp32 Adam state with step/exp_avg/exp_avg_sq and a param group
with lr/betas/eps/weight_decay; FP32 apex FusedAdam: per-parameter moments keyed by the parameter's index, only for
parameters that had a gradient, ``step`` in the group), §5.4 (one param group of the trainable parameters), and
hand-built tensors whose expected placement is written out literally."""

import pytest
import torch

from common.optim import AdamW, OptimizerConfig, adam_state_from_reference, adapt_optimizer_state, build_optimizer


def _params():
    return [torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4))]


def test_reference_eps_betas_and_weight_decay_are_taken_over():
    """The fine-tuning recipes pass --adam_eps 1e-8 and --weight_decay 0 (§5.4): a run resumed from such a checkpoint
    must continue with them, whatever the optimizer was built with (1e-6, 0.01)."""
    params = _params()
    opt = build_optimizer(params, OptimizerConfig())
    ref = {"state": {0: {"step": 3, "exp_avg": torch.zeros(10), "exp_avg_sq": torch.zeros(10)}},
           "param_groups": [{"params": [0], "lr": 2e-5, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.0}]}
    opt.load_state_dict(adam_state_from_reference(ref, params, opt))
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (2e-5, (0.9, 0.98), 1e-8, 0.0)


def test_fp32_state_with_one_entry_of_several_parameters_is_not_read_as_a_flat_tensor():
    """apex keeps moments only for parameters that had a gradient: a model of two parameters (6 + 4 values) whose
    first one was frozen has ONE state entry, keyed 1, of 4 values. It is that parameter's, not a flat state of all."""
    params = _params()
    opt = build_optimizer(params, OptimizerConfig())
    ref = {"state": {1: {"exp_avg": torch.tensor([1.0, 2.0, 3.0, 4.0]), "exp_avg_sq": torch.full((4,), 9.0)}},
           "param_groups": [{"params": [0, 1], "lr": 1e-4, "step": 11}]}
    out = adam_state_from_reference(ref, params, opt)
    assert sorted(out["state"]) == [1]
    assert out["state"][1]["exp_avg"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert float(out["state"][1]["step"]) == 11


def test_an_entry_for_a_parameter_past_the_model_is_a_value_error():
    """Two parameters have indices 0 and 1: an entry keyed 2 names a parameter the model does not have."""
    params = _params()
    opt = build_optimizer(params, OptimizerConfig())
    ref = {"state": {2: {"exp_avg": torch.ones(4), "exp_avg_sq": torch.ones(4)}}, "param_groups": [{"step": 1}]}
    with pytest.raises(ValueError):
        adam_state_from_reference(ref, params, opt)


def test_a_layout_that_places_a_parameter_twice_is_refused():
    """[[0], [0]] covers two reference parameters with the same parameter of ours and never places parameter 1."""
    params = _params()
    opt = build_optimizer(params, OptimizerConfig())
    ref = {"state": {j: {"exp_avg": torch.zeros(2, 3), "exp_avg_sq": torch.zeros(2, 3)} for j in (0, 1)},
           "param_groups": [{"step": 1}]}  # shapes that fit the wrong layout: only the coverage check can object
    with pytest.raises(ValueError):
        adam_state_from_reference(ref, params, opt, layout=[[0], [0]])


def test_frozen_parameters_are_not_part_of_the_reference_layout():
    """The optimizer holds the trainable parameters only (§5.4): a frozen one passed along is skipped, so the flat
    state of 4 values belongs to the 4-value trainable parameter."""
    frozen, live = torch.nn.Parameter(torch.zeros(3), requires_grad=False), torch.nn.Parameter(torch.zeros(4))
    opt = build_optimizer([live], OptimizerConfig())
    ref = {"state": {0: {"step": 5, "exp_avg": torch.arange(4.0), "exp_avg_sq": torch.ones(4)}},
           "param_groups": [{"lr": 1e-4}]}
    out = adam_state_from_reference(ref, [frozen, live], opt)
    assert sorted(out["state"]) == [0] and out["state"][0]["exp_avg"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_torch_state_with_unequal_steps_converts_to_apex_with_the_largest():
    """apex keeps one step count for the group. A torch state whose parameters counted 3 and 5 steps (one started
    late) continues at 5: the bias correction of the run so far, not a restart of the longer-lived moments at 3."""
    class ApexLike(torch.optim.Optimizer):  # group-level step, like apex FusedAdam
        def __init__(self, params):
            super().__init__(params, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                          bias_correction=True, step=0))

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    saved = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2), "exp_avg_sq": torch.ones(2)},
                       1: {"step": torch.tensor(5.0), "exp_avg": torch.ones(3), "exp_avg_sq": torch.ones(3)}},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": [0, 1]}]}
    state, converted = adapt_optimizer_state(saved, ApexLike([a, b]))
    assert converted == "apex FusedAdam's layout" and state["param_groups"][0]["step"] == 5
    assert not isinstance(ApexLike([a, b]), AdamW)
