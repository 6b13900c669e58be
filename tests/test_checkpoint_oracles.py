"""Oracle tests for wav2vec2/checkpoint.py found by mutation testing: the reference's parameter order when a
checkpoint does not name its attention implementation, and argparse-Namespace args.

Oracle: REFERENCE.md §1.9 (``--mha`` default is ``fairseq``; fairseq's attention registers k_proj, v_proj, q_proj,
out_proj; ``pyt`` holds one packed qkv (rows q, k, v) then out_proj) and §2.2 (args saved as a dict)."""

import argparse

import torch

from wav2vec2.checkpoint import reference_parameter_layout

A = "encoder.layers.0.self_attn"


def _ckpt(args):
    # saved key order of one attention block as the reference's state_dict writes it (split q/k/v names)
    names = ["encoder.layer_norm.weight"] + [f"{A}.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")
                                             for w in ("weight", "bias")]
    model = {n: torch.zeros(4, 4) if n.endswith("weight") and "layer_norm" not in n else torch.zeros(4) for n in names}
    return {"args": args, "model": model}


FAIRSEQ = [["encoder.layer_norm.weight"]] + [[f"{A}.{p}.{w}"] for p in ("k_proj", "v_proj", "q_proj", "out_proj")
                                             for w in ("weight", "bias")]
PYT = [["encoder.layer_norm.weight"], [f"{A}.{x}_proj.weight" for x in "qkv"], [f"{A}.{x}_proj.bias" for x in "qkv"],
       [f"{A}.out_proj.weight"], [f"{A}.out_proj.bias"]]


def test_checkpoint_without_mha_uses_the_cli_default_fairseq_order():
    """--mha defaults to fairseq (REFERENCE.md §8 table / §1.9): args without the key, or without args at all,
    lay the attention block out as fairseq's k, v, q, out (weight, bias each), not the packed pyt layout."""
    assert reference_parameter_layout(_ckpt({"mode": "pretrain"})) == FAIRSEQ
    assert reference_parameter_layout(_ckpt(None)) == FAIRSEQ
    assert reference_parameter_layout(_ckpt({"mha": "fairseq"})) == FAIRSEQ
    assert reference_parameter_layout(_ckpt({"mha": "pyt"})) == PYT


def test_namespace_args_are_read_for_the_mha():
    """Older checkpoints carry an argparse Namespace: its ``mha`` attribute decides the layout as a dict's key does."""
    assert reference_parameter_layout(_ckpt(argparse.Namespace(mha="pyt"))) == PYT
    assert reference_parameter_layout(_ckpt(argparse.Namespace(mode="pretrain"))) == FAIRSEQ


# ----------------------------------------------------------------------------------------- HuggingFace key conversion

from types import SimpleNamespace  # noqa: E402

from wav2vec2.checkpoint import _drop_identity_projection, from_hf_state_dict, hf_state_dict  # noqa: E402


def test_old_style_hf_weight_norm_names_map_g_to_g_and_v_to_v():
    """transformers before torch's parametrizations saved the positional conv as ``weight_g`` (magnitude, 1 x 1 x K)
    and ``weight_v`` (direction); torch's ``parametrizations.weight.original0`` is g and ``original1`` is v (torch
    docs of ``nn.utils.parametrizations.weight_norm``). Each must land on our own name, not the other one."""
    g, v = torch.full((1, 1, 3), 2.0), torch.ones(8, 4, 3)
    base = "wav2vec2.encoder.pos_conv_embed.conv."
    out = from_hf_state_dict({base + "weight_g": g, base + "weight_v": v, base + "bias": torch.zeros(8)})
    assert out["encoder.pos_conv.0.weight_g"] is g and out["encoder.pos_conv.0.weight_v"] is v
    new = from_hf_state_dict({base + "parametrizations.weight.original0": g,
                              base + "parametrizations.weight.original1": v})
    assert new["encoder.pos_conv.0.weight_g"] is g and new["encoder.pos_conv.0.weight_v"] is v


def test_a_ctc_state_dict_drops_pretraining_heads():
    """A fine-tuned CTC model has no quantizer, project_q or final_proj (REFERENCE.md §2.6): HF pretraining-head
    names in a dict with an ``lm_head`` are left out, not turned into keys the CTC model does not have."""
    sd = {"lm_head.weight": torch.zeros(5, 4), "lm_head.bias": torch.zeros(5),
          "project_hid.weight": torch.zeros(2, 4), "quantizer.codevectors": torch.zeros(1, 4, 2),
          "wav2vec2.masked_spec_embed": torch.zeros(4)}
    out = from_hf_state_dict(sd)
    assert sorted(out) == ["w2v_encoder.proj.bias", "w2v_encoder.proj.weight", "w2v_encoder.w2v_model.mask_emb"]


def _no_projection_cfg(dim=4):
    # the only fields _drop_identity_projection reads: the last conv width equals the encoder width (no projection)
    return SimpleNamespace(conv_layers=[(dim, 2, 2)], encoder_embed_dim=dim)


def test_only_an_exact_identity_projection_is_dropped():
    """x W^T + b equals x only for W = I and b = 0: an identity weight with a non-zero bias is a real layer that the
    architecture without ``post_extract_proj`` cannot hold, so it must stay for the loader to refuse."""
    eye = torch.eye(4)
    sd = {"post_extract_proj.weight": eye.clone(), "post_extract_proj.bias": torch.zeros(4)}
    _drop_identity_projection(sd, _no_projection_cfg(), "")
    assert sd == {}
    shifted = {"post_extract_proj.weight": eye.clone(), "post_extract_proj.bias": torch.full((4,), 0.5)}
    _drop_identity_projection(shifted, _no_projection_cfg(), "")
    assert sorted(shifted) == ["post_extract_proj.bias", "post_extract_proj.weight"]


def test_hf_export_of_a_model_without_projection_writes_the_exact_identity():
    """HF always has feature_projection.projection: for a model without ``post_extract_proj`` the export writes the
    map it stands for, x -> x: W = I and b = 0, checked by applying it (torch's own linear) to random features."""
    from wav2vec2.config import preset
    from wav2vec2.model import Wav2Vec2Model

    cfg = preset("tiny", encoder_embed_dim=32, conv_feature_layers="[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2",
                 encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4)
    model = Wav2Vec2Model(cfg)
    assert not any(k.startswith("post_extract_proj.") for k in model.state_dict())
    sd = hf_state_dict(model)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.linear(x, sd["wav2vec2.feature_projection.projection.weight"],
                                   sd["wav2vec2.feature_projection.projection.bias"])
    assert torch.equal(y, x)


# ----------------------------------------------------------------------------------------- DDP prefixes

from wav2vec2.checkpoint import upgrade_state_dict  # noqa: E402


def test_ddp_module_prefixes_are_removed_at_the_front_and_inside():
    """A DDP-wrapped model (``module.``) or a DDP-wrapped submodule (``.module.`` inside the name) saves the same
    parameters under longer names: every such segment goes, nothing else changes."""
    t = torch.zeros(2)
    out = upgrade_state_dict({"module.encoder.layer_norm.weight": t, "w2v_encoder.module.proj.weight": t,
                              "module.w2v_encoder.module.w2v_model.mask_emb": t, "modules_x.weight": t,
                              "adapter.submodule.weight": t})
    assert sorted(out) == ["adapter.submodule.weight", "encoder.layer_norm.weight", "modules_x.weight",
                           "w2v_encoder.proj.weight", "w2v_encoder.w2v_model.mask_emb"]


def test_reference_layout_is_given_in_our_names_for_a_ddp_prefixed_checkpoint():
    """The layout lists OUR parameter names (the optimizer state is placed by them): a checkpoint whose keys carry
    DDP's ``module.`` prefix gives the same layout, in the same order, as one without it."""
    plain = _ckpt({"mha": "pyt"})
    prefixed = {"args": {"mha": "pyt"}, "model": {"module." + k: v for k, v in plain["model"].items()}}
    assert reference_parameter_layout(prefixed) == PYT


def test_inference_time_extractor_names_are_undone():
    """REFERENCE.md §2.6: the reference's inference model renames ``conv_layers.{i}.0.*`` to ``conv_layers.{i}.conv.*``
    and ``conv_layers.0.2.*`` to ``conv_layers.0.norm.*`` or, with the fp32 masked GroupNorm,
    ``conv_layers.0.norm._group_norm.*``: all of them come back to the training names."""
    t = torch.zeros(2)
    fe = "feature_extractor.conv_layers."
    out = upgrade_state_dict({fe + "0.conv.weight": t, fe + "3.conv.weight": t,
                              fe + "0.norm._group_norm.weight": t, fe + "0.norm._group_norm.bias": t})
    assert sorted(out) == sorted([fe + "0.0.weight", fe + "3.0.weight", fe + "0.2.weight", fe + "0.2.bias"])
    plain = upgrade_state_dict({fe + "0.norm.weight": t})
    assert list(plain) == [fe + "0.2.weight"]
