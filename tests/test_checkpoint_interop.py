"""Checkpoints as users bring them: hand-built fairseq (legacy argparse ``args`` and hydra ``cfg``), NVIDIA DLE and
HuggingFace ``save_pretrained`` structures, with key names taken from those projects (not from our model), checked
against HuggingFace transformers as an independent oracle (same weights mapped by HF's own module names)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

from wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2Model, preset
from wav2vec2.checkpoint import CheckpointError, load_checkpoint, load_pretrained_into_ctc

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = dict(C=32, E=16, F=64, H=4, L=2, K=8, G=4)
CONV = ((16, 10, 5), (16, 3, 2), (16, 2, 2))
BASE_LIKE = dict(mode="default", conv_bias=False, lnf=False, normalize=False)
LARGE_LIKE = dict(mode="layer_norm", conv_bias=True, lnf=True, normalize=True)
X = torch.randn(1, 4000, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------------------------
# fairseq structures (names from fairseq's wav2vec2.py / wav2vec2_asr.py and REFERENCE.md 2.6)
# ------------------------------------------------------------------------------------------------------------------

def fairseq_state_dict(mode="default", conv_bias=False, final=12, quant=True, V=8, groups=2, ctc_vocab=None, seed=0,
                       C=32, E=16, F=64, L=2, K=8, G=4, **_):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    sd, cin = {}, 1
    for i, (d, k, _s) in enumerate(CONV):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = r(d, cin, k)
        if conv_bias:
            sd[f"feature_extractor.conv_layers.{i}.0.bias"] = r(d)
        norm = {"default": ".2" if i == 0 else None, "layer_norm": ".2.1"}[mode]
        if norm:
            sd[f"feature_extractor.conv_layers.{i}{norm}.weight"] = 1 + r(d)
            sd[f"feature_extractor.conv_layers.{i}{norm}.bias"] = r(d)
        cin = d
    sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = r(C, E), r(C)
    fd = final if final > 0 else C  # fairseq: final_dim <= 0 means encoder_embed_dim
    if ctc_vocab is None:
        if quant:
            sd["quantizer.vars"] = r(1, groups * V, fd // groups)
            sd["quantizer.weight_proj.weight"], sd["quantizer.weight_proj.bias"] = r(groups * V, E), r(groups * V)
        sd["project_q.weight"], sd["project_q.bias"] = r(fd, fd if quant else E), r(fd)
    sd["mask_emb"] = r(C)
    sd["encoder.pos_conv.0.bias"] = r(C)
    sd["encoder.pos_conv.0.weight_g"] = 1 + r(1, 1, K).abs()
    sd["encoder.pos_conv.0.weight_v"] = r(C, C // G, K)
    for i in range(L):
        p = f"encoder.layers.{i}."
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd[p + f"self_attn.{n}.weight"], sd[p + f"self_attn.{n}.bias"] = r(C, C), r(C)
        for n, shape in (("self_attn_layer_norm", None), ("fc1", (F, C)), ("fc2", (C, F)), ("final_layer_norm", None)):
            if shape is None:
                sd[p + n + ".weight"], sd[p + n + ".bias"] = 1 + r(C), r(C)
            else:
                sd[p + n + ".weight"], sd[p + n + ".bias"] = r(*shape), r(shape[0])
    sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"] = 1 + r(C), r(C)
    sd["layer_norm.weight"], sd["layer_norm.bias"] = 1 + r(E), r(E)
    if ctc_vocab is None:
        sd["final_proj.weight"], sd["final_proj.bias"] = r(fd, C), r(fd)
        return sd
    out = {"w2v_encoder.w2v_model." + k: v for k, v in sd.items()}
    out["w2v_encoder.proj.weight"], out["w2v_encoder.proj.bias"] = r(ctc_vocab, C), r(ctc_vocab)
    return out


def legacy_pretrain_args(mode="default", conv_bias=False, lnf=False, normalize=False, final=12, quant=True, V=8,
                         groups=2, C=32, F=64, H=4, L=2, K=8, G=4, **_):
    """What ``fairseq-train --task audio_pretraining --arch wav2vec2`` (fairseq 0.9/0.10) pickles as ``args``."""
    spec = "[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in CONV) + "]"
    return argparse.Namespace(
        task="audio_pretraining", arch="wav2vec2", criterion="wav2vec", optimizer="adam", fp16=True, seed=1,
        max_update=400000, update_freq=[1], lr=[0.0005], max_tokens=1400000, data="/data", sample_rate=16000,
        normalize=normalize, max_sample_size=250000, min_sample_size=32000, enable_padding=False, infonce=True,
        loss_weights="[0.1, 10]", extractor_mode=mode, encoder_layers=L, encoder_embed_dim=C,
        encoder_ffn_embed_dim=F, encoder_attention_heads=H, activation_fn="gelu", dropout=0.1, attention_dropout=0.1,
        activation_dropout=0.0, final_dim=final, layer_norm_first=lnf, encoder_layerdrop=0.05,
        conv_feature_layers=spec, logit_temp=0.1, quantize_targets=quant, quantize_input=False, same_quantizer=False,
        feature_grad_mult=0.1, latent_vars=V, latent_groups=groups, latent_dim=0, mask_length=10, mask_prob=0.65,
        mask_selection="static", mask_other=0, no_mask_overlap=False, mask_min_space=1, mask_channel_length=10,
        mask_channel_prob=0, mask_channel_selection="static", mask_channel_other=0, no_mask_channel_overlap=False,
        mask_channel_min_space=1, dropout_input=0.1, dropout_features=0.1, num_negatives=100,
        negatives_from_everywhere=False, cross_sample_negatives=0, codebook_negatives=0, conv_pos=K,
        conv_pos_groups=G, latent_temp="(2,0.5,0.999995)", target_glu=False, conv_bias=conv_bias,
    )


def legacy_ctc_args(w2v_args):
    """``--arch wav2vec_ctc`` (fairseq 0.10): fine-tuning values, the pretraining Namespace nested as w2v_args."""
    return argparse.Namespace(
        task="audio_pretraining", arch="wav2vec_ctc", criterion="ctc", labels="ltr", normalize=w2v_args.normalize,
        w2v_path="/checkpoint/wav2vec_small.pt", no_pretrained_weights=False, dropout_input=0.0, final_dropout=0.0,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.1, apply_mask=True, mask_length=10, mask_prob=0.5,
        mask_selection="static", mask_other=0, no_mask_overlap=False, mask_channel_length=64, mask_channel_prob=0.5,
        mask_channel_selection="static", mask_channel_other=0, no_mask_channel_overlap=False,
        freeze_finetune_updates=0, feature_grad_mult=0.0, layerdrop=0.1, w2v_args=w2v_args,
    )


def legacy_checkpoint(sd, args):
    return {
        "args": args, "model": sd,
        "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FP16Optimizer",
                               "lr_scheduler_state": {"best": 3.1}, "num_updates": 400000}],
        "extra_state": {"epoch": 300, "train_iterator": {"epoch": 300, "iterations_in_epoch": 0}},
        "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 0.0}], "loss_scale": 4.0},
    }


def save_with_fairseq_meters(ckpt, path):
    """Old fairseq checkpoints pickle fairseq.meters.AverageMeter objects in extra_state: pickle them under that
    module name (registered only while saving; fairseq itself is not installed)."""
    mod = types.ModuleType("fairseq.meters")

    class AverageMeter:
        def __init__(self):
            self.val, self.avg, self.sum, self.count = 1.0, 2.0, 3.0, 4

    AverageMeter.__module__, AverageMeter.__qualname__ = "fairseq.meters", "AverageMeter"
    mod.AverageMeter = AverageMeter
    saved = {k: sys.modules.get(k) for k in ("fairseq", "fairseq.meters")}
    sys.modules["fairseq"], sys.modules["fairseq.meters"] = types.ModuleType("fairseq"), mod
    try:
        ckpt["extra_state"]["train_meters"] = {"train_loss": AverageMeter()}
        torch.save(ckpt, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


# ------------------------------------------------------------------------------------------------------------------
# the oracle: the same weights in HuggingFace transformers (names from HF's Wav2Vec2 modules)
# ------------------------------------------------------------------------------------------------------------------

def hf_from_fairseq(sd, mode, conv_bias, lnf, final=12, V=8, groups=2, C=32, F=64, H=4, L=2, K=8, G=4, **_):
    ctc = any(k.startswith("w2v_encoder.") for k in sd)
    simple = {"post_extract_proj": "wav2vec2.feature_projection.projection",
              "layer_norm": "wav2vec2.feature_projection.layer_norm", "encoder.layer_norm": "wav2vec2.encoder.layer_norm",
              "project_q": "project_q", "final_proj": "project_hid", "quantizer.weight_proj": "quantizer.weight_proj",
              "encoder.pos_conv.0": "wav2vec2.encoder.pos_conv_embed.conv"}
    inner = {"self_attn_layer_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
             "fc2": "feed_forward.output_dense", "final_layer_norm": "final_layer_norm"}
    hsd = {}
    for k, v in sd.items():
        if k.startswith("w2v_encoder.proj."):
            hsd["lm_head." + k.rsplit(".", 1)[1]] = v
            continue
        k = k.replace("w2v_encoder.w2v_model.", "")
        head, _, leaf = k.rpartition(".")
        if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", k):
            hsd[f"wav2vec2.feature_extractor.conv_layers.{m[1]}.conv.{m[2]}"] = v
        elif m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.2\.(?:1\.)?(weight|bias)", k):
            hsd[f"wav2vec2.feature_extractor.conv_layers.{m[1]}.layer_norm.{m[2]}"] = v
        elif head in simple:
            leaf = {"weight_g": "parametrizations.weight.original0",
                    "weight_v": "parametrizations.weight.original1"}.get(leaf, leaf)
            hsd[f"{simple[head]}.{leaf}"] = v
        elif k == "mask_emb":
            hsd["wav2vec2.masked_spec_embed"] = v
        elif k == "quantizer.vars":
            hsd["quantizer.codevectors"] = v
        else:
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", k)
            mod = inner.get(m[2], m[2].replace("self_attn", "attention"))
            hsd[f"wav2vec2.encoder.layers.{m[1]}.{mod}.{m[3]}"] = v
    fd = final if final > 0 else C
    cfg = transformers.Wav2Vec2Config(
        conv_dim=[c[0] for c in CONV], conv_kernel=[c[1] for c in CONV], conv_stride=[c[2] for c in CONV],
        conv_bias=conv_bias, feat_extract_norm="group" if mode == "default" else "layer", hidden_size=C,
        num_hidden_layers=L, num_attention_heads=H, intermediate_size=F, num_conv_pos_embeddings=K,
        num_conv_pos_embedding_groups=G, do_stable_layer_norm=lnf, layer_norm_eps=1e-5, hidden_dropout=0.0,
        activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, final_dropout=0.0,
        vocab_size=32, num_codevectors_per_group=V, num_codevector_groups=groups, codevector_dim=fd,
        proj_codevector_dim=fd, attn_implementation="eager")
    hf = (transformers.Wav2Vec2ForCTC if ctc else transformers.Wav2Vec2ForPreTraining)(cfg)
    missing, unexpected = hf.load_state_dict(hsd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return hf.eval()


def _ours_vs_hf(ours, hf):
    with torch.no_grad():
        if isinstance(ours, Wav2Vec2ForCTC):
            return (ours(X)[0] - hf(X).logits).abs().max().item()
        return (ours.extract_features(X)[0] - hf.wav2vec2(X).last_hidden_state).abs().max().item()


# ------------------------------------------------------------------------------------------------------------------
# fairseq
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["base_like", "large_like"])
def test_fairseq_legacy_pretraining_and_960h_checkpoints_match_the_hf_oracle(tmp_path, style):
    """wav2vec_small.pt / wav2vec_small_960h.pt structure: ``args`` Namespace (fairseq's names, latent_temp as a
    string, conv spec with spaces), meters pickled as fairseq classes, ``optimizer_history``/``last_optimizer_state``;
    the fine-tuned one under w2v_encoder.* with the pretraining Namespace nested as ``w2v_args``. Architecture
    (extractor mode, conv bias, pre-LN, normalize) comes from the checkpoint, logits equal HF's on the same weights."""
    kw = BASE_LIKE if style == "base_like" else LARGE_LIKE
    args = legacy_pretrain_args(**kw)
    pre, ft = str(tmp_path / "wav2vec_small.pt"), str(tmp_path / "wav2vec_small_960h.pt")
    save_with_fairseq_meters(legacy_checkpoint(fairseq_state_dict(**kw), args), pre)
    torch.save(legacy_checkpoint(fairseq_state_dict(ctc_vocab=32, **kw), legacy_ctc_args(args)), ft)
    for path, kind in ((pre, "pretrain"), (ft, "ctc")):
        lc = load_checkpoint(path)
        c = lc.config
        assert (lc.source_format, lc.kind) == ("fairseq", kind)
        assert (c.extractor_mode, c.conv_bias, c.layer_norm_first, c.normalize) == (
            kw["mode"], kw["conv_bias"], kw["lnf"], kw["normalize"])
        assert (c.encoder_layers, c.encoder_embed_dim, c.hourglass, c.latent_temp) == (2, 32, None, (2.0, 0.5, 0.999995))
        if kind == "ctc":  # fine-tuning values from the CTC args, not the nested pretraining ones
            assert (c.encoder_layerdrop, c.mask_prob, c.mask_channel_length) == (0.1, 0.5, 64)
        ckpt = torch.load(path, weights_only=False) if kind == "ctc" else None
        sd = ckpt["model"] if ckpt else fairseq_state_dict(**kw)
        assert _ours_vs_hf(lc.model, hf_from_fairseq(sd, **kw)) < 1e-5


def test_fairseq_final_dim_zero_means_encoder_dim(tmp_path):
    """fairseq (and the reference, REFERENCE.md 8.3): ``final_dim <= 0`` projects to encoder_embed_dim. Such a
    checkpoint loads with D = C and matches the oracle; a config with final_dim 0 builds C-wide heads."""
    kw = dict(BASE_LIKE, final=0)
    path = str(tmp_path / "final0.pt")
    sd = fairseq_state_dict(**kw)
    torch.save(legacy_checkpoint(sd, legacy_pretrain_args(**kw)), path)
    lc = load_checkpoint(path)
    assert lc.model.final_proj.weight.shape == (32, 32) and lc.model.quantizer.vars.shape == (1, 16, 16)
    assert _ours_vs_hf(lc.model, hf_from_fairseq(sd, **kw)) < 1e-5
    m = Wav2Vec2Model(preset("tiny", final_dim=0))
    assert m.final_proj.out_features == m.cfg.encoder_embed_dim == m.project_q.out_features


def test_fairseq_hydra_checkpoints_load_without_omegaconf(tmp_path):
    """Hydra-era files: ``cfg`` with fairseq's section order (model before task), ``task.normalize``, unresolved
    ``${...}`` interpolations in the CTC section, w2v_args with criterion/lr_scheduler None; pickled as omegaconf
    DictConfig or as plain containers. Read in a process where importing omegaconf or fairseq fails."""
    omegaconf = pytest.importorskip("omegaconf")
    kw = LARGE_LIKE
    a = vars(legacy_pretrain_args(**kw))
    model = {k: a[k] for k in a if k not in ("task", "arch", "criterion", "optimizer", "fp16", "seed", "max_update",
                                             "update_freq", "lr", "max_tokens", "data", "sample_rate", "normalize",
                                             "max_sample_size", "min_sample_size", "enable_padding", "infonce",
                                             "loss_weights")}
    model.update(_name="wav2vec2", latent_temp=[2.0, 0.5, 0.999995], pos_conv_depth=1, layer_type="transformer",
                 require_same_masks=True, mask_dropout=0.0, checkpoint_activations=False)

    def cfg(model_section, task_name):
        return {"_name": None, "common": {"fp16": True, "tpu": False}, "distributed_training": {"ddp_backend": "c10d"},
                "optimization": {"max_update": 400000, "lr": [0.0005]}, "model": model_section,
                "task": {"_name": task_name, "data": "/data", "normalize": True, "tpu": "${common.tpu}"},
                "criterion": {"_name": "wav2vec", "infonce": True}, "lr_scheduler": {"_name": "polynomial_decay"},
                "bpe": None, "ema": {"store_ema": False}}

    pre = cfg(model, "audio_pretraining")
    ctc = {"_name": "wav2vec_ctc", "w2v_path": "/ckpt/pre.pt", "w2v_args": dict(pre, criterion=None,
                                                                                 lr_scheduler=None),
           "normalize": "${task.normalize}", "data": "${task.data}", "ddp_backend": "${distributed_training.ddp_backend}",
           "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
           "encoder_embed_dim": 768, "layerdrop": 0.1, "mask_prob": 0.5, "mask_channel_length": 64,
           "apply_mask": True, "final_dropout": 0.0, "freeze_finetune_updates": 0, "feature_grad_mult": 0.0,
           "blank_weight": 0.0, "blank_mode": "add"}
    paths = []
    for wrap_name, wrap in (("dictconfig", omegaconf.OmegaConf.create), ("plain", lambda d: d)):
        for name, section, sd in (("pre", pre, fairseq_state_dict(**kw)),
                                  ("ctc", cfg(ctc, "audio_finetuning"), fairseq_state_dict(ctc_vocab=32, **kw))):
            path = str(tmp_path / f"{name}_{wrap_name}.pt")
            torch.save({"args": None, "cfg": wrap(section), "model": sd, "optimizer_history": [],
                        "extra_state": {"metrics": {}}, "last_optimizer_state": None}, path)
            paths.append(path)
    code = ("import sys; sys.modules['omegaconf'] = None; sys.modules['fairseq'] = None\n"
            "from wav2vec2.checkpoint import load_checkpoint\n"
            f"for p in {paths!r}:\n"
            "    c = load_checkpoint(p).config\n"
            "    print(c.extractor_mode, c.conv_bias, c.layer_norm_first, c.normalize, c.encoder_embed_dim,"
            " c.encoder_layerdrop, c.mask_channel_length)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.split("\n")
    for i in (0, 2):
        assert lines[i].split() == ["layer_norm", "True", "True", "True", "32", "0.05", "10"]
        assert lines[i + 1].split() == ["layer_norm", "True", "True", "True", "32", "0.1", "64"]


def test_wrong_shapes_and_other_architectures_are_named(tmp_path):
    """A checkpoint whose weights do not fit the architecture its args describe (here: encoder_embed_dim edited)
    is one CheckpointError naming the file and the keys, not torch's RuntimeError; conformer and input-quantizer
    models are refused by name."""
    kw = BASE_LIKE
    args = legacy_pretrain_args(**kw)
    args.encoder_ffn_embed_dim = 48
    path = str(tmp_path / "odd_ffn.pt")
    torch.save(legacy_checkpoint(fairseq_state_dict(**kw), args), path)
    with pytest.raises(CheckpointError, match=r"odd_ffn\.pt: .*other shape .*encoder\.layers\.0\.fc1\.weight \[64, 32\]"):
        load_checkpoint(path)
    ctc = Wav2Vec2ForCTC(preset("tiny"), 8)
    with pytest.raises(CheckpointError, match=r"my\.pt: .*other shape"):
        load_pretrained_into_ctc(ctc, fairseq_state_dict(**kw), source="my.pt")
    for field, value, msg in (("layer_type", "conformer", "conformer"), ("quantize_input", True, "quantize_input")):
        args = legacy_pretrain_args(**kw)
        setattr(args, field, value)
        path = str(tmp_path / f"{field}.pt")
        torch.save(legacy_checkpoint(fairseq_state_dict(**kw), args), path)
        with pytest.raises(CheckpointError, match=f"{field}.pt: .*{msg}"):
            load_checkpoint(path)


def test_finetune_from_a_fairseq_large_checkpoint_takes_its_architecture(tmp_path):
    """train.py finetune --w2v_path <legacy fairseq Large-style file>: the fine-tuned checkpoint has the pretrained
    architecture (layer-norm extractor, conv bias, pre-LN, normalize) and the command line's dropout/masking."""
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import make_corpus

    data = make_corpus(str(tmp_path / "corpus"), n_train=4, n_valid=2)
    pre = str(tmp_path / "wav2vec_vox.pt")
    save_with_fairseq_meters(legacy_checkpoint(fairseq_state_dict(**LARGE_LIKE), legacy_pretrain_args(**LARGE_LIKE)),
                             pre)
    out = str(tmp_path / "ft")
    cmd = [sys.executable, "train.py", "finetune", "--w2v_path", pre, "--data", data, "--train_subset", "train",
           "--valid_subset", "valid", "--output_dir", out, "--cpu", "--max_tokens", "60000",
           "--required_batch_size_multiple", "1", "--num_workers", "0", "--max_update", "3", "--lr", "0.001", "--update_freq", "1",
           "--lr_policy", "exp", "--warmup_updates", "1", "--hold_updates", "1", "--final_lr_scale", "0.05",
           "--apply_mask", "--mask_prob", "0.3", "--mask_length", "2", "--dropout", "0.0",
           "--feature_grad_mult", "0", "--save_frequency", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    c = load_checkpoint(os.path.join(out, "wav2vec2_update3.pt")).config
    assert (c.extractor_mode, c.conv_bias, c.layer_norm_first, c.normalize) == ("layer_norm", True, True, True)
    assert (c.dropout, c.mask_prob, c.attention_dropout) == (0.0, 0.3, 0.0)


# ------------------------------------------------------------------------------------------------------------------
# NVIDIA DLE
# ------------------------------------------------------------------------------------------------------------------

def test_nvidia_hourglass_fp16_checkpoint_keys_and_finetune_init():
    """REFERENCE.md 2.2/2.6/1.10: args dict with ``mode`` and ``hourglass_transformer``; fp16 weights except the
    fp32 pos_conv; stacks ``layers`` (pre), ``hourglass_layers``, ``post_layers``; linear resampling under
    ``encoder.{down,up}sample_layer.linear``. Key names and shapes are the reference's; CTC init copies them."""
    import tempfile

    kw = dict(BASE_LIKE)
    sd = fairseq_state_dict(**kw, L=4)
    renamed = {}
    for k, v in sd.items():
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)", k)
        if m:
            i = int(m[1])
            stack, j = ("layers", i) if i < 1 else ("hourglass_layers", i - 1) if i < 3 else ("post_layers", i - 3)
            k = f"encoder.{stack}.{j}.{m[2]}"
        renamed[k] = v if "pos_conv" in k else v.half()
    C = DIMS["C"]
    g = torch.Generator().manual_seed(5)
    renamed["encoder.downsample_layer.linear.weight"] = torch.randn(C, 2 * C, generator=g).half()
    renamed["encoder.downsample_layer.linear.bias"] = torch.randn(C, generator=g).half()
    renamed["encoder.upsample_layer.linear.weight"] = torch.randn(2 * C, C, generator=g).half()
    renamed["encoder.upsample_layer.linear.bias"] = torch.randn(2 * C, generator=g).half()
    args = {k: v for k, v in vars(legacy_pretrain_args(**kw, L=4)).items()}
    args.update(mode="pretrain", hourglass_transformer="[1,(2,2),1]", hourglass_resample="linear", mha="pyt",
                latent_temp=[2.0, 0.5, 0.999995], fp32_pos_conv=True, world_size=8)
    ckpt = {"args": args, "model": renamed, "ema_model": None, "optimizer": {"state": {}, "param_groups": []},
            "scaler": {}, "train_state": {"step": 10, "epoch": 2, "optimizer_type": "FP16Optimizer",
                                          "scaler_type": "GradScaler"}}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "wav2vec2_update10.pt")
        torch.save(ckpt, path)
        lc = load_checkpoint(path)
    assert lc.source_format == "nvidia" and lc.config.hourglass.num_layers == 4
    assert lc.config.hourglass_resample == "linear"
    got = lc.model.state_dict()
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in renamed.items()}
    assert all(torch.equal(got[k], v.float()) for k, v in renamed.items())
    ctc = Wav2Vec2ForCTC(lc.config, 10)
    ctc.load_pretrained(renamed)
    assert torch.equal(ctc.w2v_model.encoder.post_layers[0].fc1.weight, renamed["encoder.post_layers.0.fc1.weight"].float())


# ------------------------------------------------------------------------------------------------------------------
# HuggingFace directories written by transformers itself
# ------------------------------------------------------------------------------------------------------------------

def _hf_native(path, **kw):
    cfg = transformers.Wav2Vec2Config(
        conv_dim=[16, 16, 16], conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2], hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
        vocab_size=32, hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
        activation_dropout=0.0, **kw)
    torch.manual_seed(0)
    m = transformers.Wav2Vec2ForCTC(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for n, p in m.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(path)
    return m


@pytest.mark.parametrize("name,kw", [
    ("group_postln", dict(pad_token_id=0)),
    ("layer_preln_bias", dict(pad_token_id=0, do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True)),
    ("no_masked_spec_embed", dict(pad_token_id=0, mask_time_prob=0.0)),
])
def test_hf_save_pretrained_models_load_with_equal_logits(tmp_path, name, kw):
    """HF -> ours on models transformers wrote (not our exporter): equal CTC logits, including Large-style options
    and a model without ``masked_spec_embed`` (HF omits it when mask_time_prob and mask_feature_prob are 0)."""
    hf = _hf_native(str(tmp_path / name), **kw)
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|"] + [chr(65 + i) for i in range(27)]
    with open(tmp_path / name / "vocab.json", "w") as f:
        json.dump({s: i for i, s in enumerate(vocab)}, f)
    lc = load_checkpoint(str(tmp_path / name))
    with torch.no_grad():
        assert (hf(X).logits - lc.model(X)[0]).abs().max() < 1e-5
    assert lc.labels.split()[::2][:3] == ["|", "A", "B"]


def test_hf_vocabularies_with_another_blank_are_refused(tmp_path):
    """HF's CTC blank is its pad token. A model fine-tuned with HF's tutorial vocabulary ([PAD] last, letters from
    index 0) would decode with a letter as our blank (output 0) and with the first four letters dropped: refused."""
    _hf_native(str(tmp_path / "tut"), pad_token_id=31)
    vocab = [chr(97 + i) for i in range(26)] + ["'", "|", "x", "[UNK]", "y", "[PAD]"]
    with open(tmp_path / "tut" / "vocab.json", "w") as f:
        json.dump({s: i for i, s in enumerate(vocab)}, f)
    with pytest.raises(CheckpointError, match=r"tut: its CTC blank \(pad_token_id\) is output 31"):
        load_checkpoint(str(tmp_path / "tut"))
    with open(tmp_path / "tut" / "config.json") as f:
        cfg = json.load(f)
    with open(tmp_path / "tut" / "config.json", "w") as f:
        json.dump(dict(cfg, pad_token_id=0), f)
    with pytest.raises(CheckpointError, match=r"vocab\.json starts with \['a', 'b', 'c', 'd'\]"):
        load_checkpoint(str(tmp_path / "tut"))
    with open(tmp_path / "tut" / "config.json", "w") as f:
        json.dump(dict(cfg, model_type="hubert"), f)
    with pytest.raises(CheckpointError, match="'hubert' model"):
        load_checkpoint(str(tmp_path / "tut"))


@pytest.mark.parametrize("preprocessor,feat_extract_norm,expected", [
    (True, "group", True), (False, "layer", False), (None, "layer", True), (None, "group", False)])
def test_hf_waveform_normalisation_is_read_from_the_preprocessor_config(tmp_path, preprocessor, feat_extract_norm,
                                                                         expected):
    """transformers' save_pretrained writes no do_normalize into config.json: it lives in the feature extractor's
    preprocessor_config.json. Without either, HF's converter's rule: the layer-norm (Large) models are normalised.
    A Large model loaded with normalize False gives different outputs, silently."""
    kw = dict(pad_token_id=0, feat_extract_norm=feat_extract_norm, do_stable_layer_norm=feat_extract_norm == "layer",
              conv_bias=feat_extract_norm == "layer")
    path = tmp_path / "m"
    _hf_native(str(path), **kw)
    config = json.loads((path / "config.json").read_text())
    assert "do_normalize" not in config
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": preprocessor,
                                                                   "sampling_rate": 16000}))
    assert load_checkpoint(str(path)).config.normalize is expected
