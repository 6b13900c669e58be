"""Checkpoint loading, conversion round trips and refusal of bad files."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys

import pytest
import torch

from wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2Model, load_model, preset
from wav2vec2.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_checkpoint,
    read_checkpoint,
    save_fairseq,
    save_hf,
    upgrade_state_dict,
)

NO_DROP = dict(
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
    dropout_input=0.0, dropout_features=0.0,
)
LABELS = "| 10\nE 9\nT 8\nA 7\n"


def _models():
    torch.manual_seed(0)
    plain = preset("tiny", **NO_DROP)
    large_like = preset("tiny", extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True, **NO_DROP)
    return {
        "pretrain": Wav2Vec2Model(plain).eval(),
        "ctc": Wav2Vec2ForCTC(plain, 8).eval(),
        "ctc_large_like": Wav2Vec2ForCTC(large_like, 8).eval(),
        "pretrain_hourglass": Wav2Vec2Model(preset("tiny", hourglass_transformer="[1,(2,2),1]", **NO_DROP)).eval(),
    }


def _outputs(model, x, lengths):
    with torch.no_grad():
        if isinstance(model, Wav2Vec2ForCTC):
            return model(x, lengths)[0]
        return model.extract_features(x, lengths)[0]


X = torch.randn(2, 9000, generator=torch.Generator().manual_seed(0))
LEN = torch.tensor([9000, 6000])


@pytest.mark.parametrize("name", ["pretrain", "ctc", "ctc_large_like"])
def test_round_trip_through_hf(tmp_path, name):
    model = _models()[name]
    save_hf(model, str(tmp_path / "hf"), labels=LABELS if "ctc" in name else None)
    back = load_checkpoint(str(tmp_path / "hf"))
    assert back.source_format == "hf" and not back.model.training
    assert set(back.model.state_dict()) == set(model.state_dict())
    assert torch.equal(_outputs(back.model, X, LEN), _outputs(model, X, LEN))
    if "ctc" in name:
        assert back.labels.split()[::2] == LABELS.split()[::2]


def test_hf_export_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _models()["ctc"]
    save_hf(model, str(tmp_path / "hf"))
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        ref = hf(X[:1]).logits
    assert (ref - _outputs(model, X[:1], None)).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["pretrain", "ctc", "pretrain_hourglass"])
def test_round_trip_through_fairseq_style(tmp_path, name):
    model = _models()[name]
    path = str(tmp_path / "fs.pt")
    save_fairseq(model, path, labels=LABELS)
    back = load_checkpoint(path)
    assert back.source_format == "fairseq"
    assert set(back.model.state_dict()) == set(model.state_dict())
    assert torch.equal(_outputs(back.model, X, LEN), _outputs(model, X, LEN))


@pytest.mark.parametrize("name", ["pretrain", "ctc", "pretrain_hourglass"])
def test_round_trip_through_ours(tmp_path, name):
    model = _models()[name]
    path = str(tmp_path / "ours.pt")
    torch.save(model_checkpoint(model, labels=LABELS), path)
    back = load_checkpoint(path)
    assert back.source_format == "ours" and back.config == model.cfg
    assert torch.equal(_outputs(back.model, X, LEN), _outputs(model, X, LEN))
    assert back.labels == LABELS


def test_nvidia_checkpoint_with_namespace_args_loads(tmp_path):
    """NVIDIA DLE: args (argparse Namespace) with `mode`, model under `model`, DDP prefixes, packed attention."""
    model = _models()["ctc"]
    cfg = model.cfg
    sd = {}
    for k, v in model.state_dict().items():
        sd["module." + k] = v
    # the reference's masked-inference names and a packed qkv for layer 0
    for p in ("weight", "bias"):
        q, k_, v_ = (sd.pop(f"module.w2v_encoder.w2v_model.encoder.layers.0.self_attn.{n}_proj.{p}") for n in "qkv")
        sd[f"module.w2v_encoder.w2v_model.encoder.layers.0.self_attn.qkv.{p}"] = torch.cat([q, k_, v_])
    w = sd.pop("module.w2v_encoder.w2v_model.feature_extractor.conv_layers.0.0.weight")
    sd["module.w2v_encoder.w2v_model.feature_extractor.conv_layers.0.conv.weight"] = w
    args = argparse.Namespace(mode="finetune", **{k: v for k, v in cfg.to_dict().items()})
    args.hourglass_transformer = None
    path = str(tmp_path / "nv.pt")
    torch.save({"args": args, "model": sd, "output_labels": LABELS, "train_state": {"step": 3}}, path)
    back = load_checkpoint(path)
    assert back.source_format == "nvidia" and back.kind == "ctc"
    assert torch.equal(_outputs(back.model, X, LEN), _outputs(model, X, LEN))


def test_upgrade_rebuilds_weight_norm_from_plain_weight():
    model = _models()["pretrain"]
    sd = model.state_dict()
    w = model.encoder.pos_conv[0].weight().detach()
    plain = {k: v for k, v in sd.items() if "pos_conv.0.weight_" not in k}
    plain["encoder.pos_conv.0.weight"] = w
    up = upgrade_state_dict(plain)
    fresh = Wav2Vec2Model(model.cfg).eval()
    fresh.load_state_dict(up)
    assert torch.allclose(fresh.encoder.pos_conv[0].weight(), w, atol=1e-6)


def test_upgrade_reads_a_parametrized_weight_norm():
    """A positional conv saved with torch's ``parametrizations.weight_norm`` (``original0`` magnitude, ``original1``
    direction) loads as ``weight_g``/``weight_v``. Oracle: torch's parametrized conv's own weight."""
    model = _models()["pretrain"]
    ours = model.encoder.pos_conv[0]
    c, cg, k = ours.weight_v.shape
    torch.manual_seed(3)
    conv = torch.nn.utils.parametrizations.weight_norm(
        torch.nn.Conv1d(c, c, k, padding=k // 2, groups=c // cg), name="weight", dim=2)
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(1.7)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.pos_conv.0.")}
    sd.update({f"encoder.pos_conv.0.{k}": v for k, v in conv.state_dict().items()})
    assert "encoder.pos_conv.0.parametrizations.weight.original0" in sd
    fresh = Wav2Vec2Model(model.cfg).eval()
    fresh.load_state_dict(upgrade_state_dict(sd))
    assert torch.allclose(fresh.encoder.pos_conv[0].weight(), conv.weight, atol=1e-6)
    assert torch.equal(fresh.encoder.pos_conv[0].bias, conv.bias)


def test_fairseq_hydra_checkpoint_with_omegaconf_and_meters(tmp_path):
    """A hydra-era fairseq checkpoint pickles omegaconf DictConfig objects; they load without running code."""
    omegaconf = pytest.importorskip("omegaconf")
    model = _models()["pretrain"]
    cfg = model.cfg.to_dict()
    cfg["latent_temp"] = list(cfg["latent_temp"])
    cfg.pop("hourglass_transformer")
    dc = omegaconf.OmegaConf.create({"common": {"fp16": True}, "task": {"normalize": False, "_name": "audio_pretraining"},
                                     "model": dict(cfg, _name="wav2vec2")})
    path = str(tmp_path / "fairseq_hydra.pt")
    torch.save({"args": None, "cfg": dc, "model": model.state_dict(), "optimizer_history": [{"num_updates": 5}],
                "extra_state": {}}, path)
    # our reader must not need omegaconf: run in a subprocess where importing it fails
    code = (
        "import sys; sys.modules['omegaconf'] = None\n"
        "from wav2vec2.checkpoint import load_checkpoint\n"
        f"lc = load_checkpoint({path!r})\n"
        "print(lc.source_format, lc.kind, lc.config.encoder_layers, lc.config.latent_temp)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:3] == ["fairseq", "pretrain", str(model.cfg.encoder_layers)]
    back = load_checkpoint(path)
    assert torch.equal(_outputs(back.model, X, LEN), _outputs(model, X, LEN))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {}, "args": _Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        read_checkpoint(path)


def test_truncated_missing_and_unknown_files(tmp_path):
    model = _models()["pretrain"]
    good = str(tmp_path / "good.pt")
    torch.save(model_checkpoint(model), good)
    data = open(good, "rb").read()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*truncated or corrupt"):
        load_model(str(bad))
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nope.pt"))
    odd = str(tmp_path / "odd.pt")
    torch.save({"weights": model.state_dict()}, odd)
    with pytest.raises(CheckpointError, match="odd.pt"):
        load_model(odd)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(str(empty))
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(str(tmp_path))


def _damage_member(path: str, member_suffix: str, pattern: bytes = b"\xff" * 64) -> None:
    """Overwrite the first bytes of a zip member's stored data in place (the zip's own structure stays intact, as
    after a bad disk block or an interrupted copy of one region)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        original = f.read(len(pattern))
        assert original != pattern
        f.seek(info.header_offset + 30 + name_len + extra_len)
        f.write(pattern)


def test_damage_inside_a_tensor_is_caught_by_the_zip_crc(tmp_path):
    """torch.load does not verify the CRC-32 that its zip format stores per member: 64 bytes of a weight tensor
    overwritten load as silently different weights. read_checkpoint checks the CRCs and names file and member."""
    model = _models()["pretrain"]
    path = str(tmp_path / "damaged.pt")
    torch.save(model_checkpoint(model), path)
    _damage_member(path, "data/3")
    loaded = torch.load(path, weights_only=False)  # torch itself does not notice
    assert any(not torch.equal(v, loaded["model"][k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match=r"damaged\.pt is corrupt: .*data/3 fails its CRC check"):
        read_checkpoint(path)


def test_non_finite_weights_and_non_checkpoint_files_are_refused(tmp_path):
    """NaN weights (e.g. 0xFF bytes written by a failing disk, or a diverged run's save) would make every update skip
    or every transcript garbage: refused with the tensor's name. A text file named .pt: one error, no traceback."""
    model = _models()["pretrain"]
    ckpt = model_checkpoint(model)
    ckpt["model"]["encoder.layers.0.fc1.weight"][0, :3] = float("nan")
    path = str(tmp_path / "nan.pt")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"nan\.pt: model weight encoder\.layers\.0\.fc1\.weight has 3 non-finite"):
        read_checkpoint(path)
    text = tmp_path / "notes.pt"
    text.write_text("hello\nworld\n")
    with pytest.raises(CheckpointError, match=r"notes\.pt is not a torch checkpoint"):
        read_checkpoint(str(text))


def test_mismatched_weights_are_reported(tmp_path):
    model = _models()["pretrain"]
    ckpt = model_checkpoint(model)
    del ckpt["model"]["encoder.layers.0.fc1.weight"]
    path = str(tmp_path / "m.pt")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="missing.*fc1"):
        load_model(path)


def test_use_ema_without_ema_weights(tmp_path):
    path = str(tmp_path / "m.pt")
    torch.save(model_checkpoint(_models()["pretrain"]), path)
    with pytest.raises(CheckpointError, match="EMA"):
        load_model(path, use_ema=True)


def test_convert_cli(tmp_path):
    path = str(tmp_path / "ours.pt")
    model = _models()["ctc"]
    torch.save(model_checkpoint(model, labels=LABELS), path)
    root = os.path.dirname(os.path.dirname(__file__))
    for to, dst in (("hf", tmp_path / "hf"), ("fairseq", tmp_path / "fs.pt")):
        res = subprocess.run([sys.executable, "-m", "wav2vec2.convert", path, str(dst), "--to", to],
                             capture_output=True, text=True, cwd=root)
        assert res.returncode == 0, res.stderr
        assert torch.equal(_outputs(load_model(str(dst)), X, LEN), _outputs(model, X, LEN))
    res = subprocess.run([sys.executable, "-m", "wav2vec2.convert", str(tmp_path / "missing.pt"), "x", "--to", "hf"],
                         capture_output=True, text=True, cwd=root)
    assert res.returncode == 2 and "missing.pt" in res.stderr


def test_ctc_initialised_from_pretrained_state():
    pre = _models()["pretrain"]
    ctc = Wav2Vec2ForCTC(pre.cfg, 8).eval()
    ctc.load_pretrained(pre.state_dict())
    with torch.no_grad():
        assert torch.equal(ctc.w2v_model.extract_features(X, LEN)[0], pre.extract_features(X, LEN)[0])


def test_pickle_module_refuses_unknown_global_directly():
    from wav2vec2.checkpoint import _RestrictedUnpickler
    import io

    payload = pickle.dumps(_Evil())
    with pytest.raises(pickle.UnpicklingError):
        _RestrictedUnpickler(io.BytesIO(payload)).load()


def test_fairseq_ctc_hydra_checkpoint_with_w2v_args(tmp_path):
    """fairseq fine-tuned CTC: architecture in cfg.model.w2v_args, fine-tuning values (layerdrop, mask_prob, ...)
    in cfg.model, weights under w2v_encoder.w2v_model.* and w2v_encoder.proj."""
    omegaconf = pytest.importorskip("omegaconf")
    model = _models()["ctc"]
    arch = {k: v for k, v in model.cfg.to_dict().items() if k not in ("hourglass_transformer", "final_dropout",
                                                                      "freeze_finetune_updates", "apply_mask",
                                                                      "blank_weight", "blank_mode")}
    arch["latent_temp"] = list(arch["latent_temp"])
    arch["mask_prob"] = 0.65
    w2v_args = {"common": {}, "task": {"normalize": False}, "model": dict(arch, _name="wav2vec2")}
    ctc_model = {"_name": "wav2vec_ctc", "w2v_path": "/nonexistent/pretrained.pt", "w2v_args": w2v_args,
                 "layerdrop": 0.1, "mask_prob": 0.5, "mask_channel_prob": 0.25, "final_dropout": 0.0,
                 "apply_mask": True, "freeze_finetune_updates": 10000}
    dc = omegaconf.OmegaConf.create({"common": {}, "task": {"normalize": False}, "model": ctc_model})
    path = str(tmp_path / "fairseq_ctc.pt")
    torch.save({"args": None, "cfg": dc, "model": model.state_dict()}, path)
    back = load_checkpoint(path)
    assert back.source_format == "fairseq" and back.kind == "ctc"
    assert back.config.encoder_layerdrop == 0.1 and back.config.mask_prob == 0.5
    assert back.config.freeze_finetune_updates == 10000 and back.config.hourglass is None
    assert torch.equal(_outputs(back.model, X, LEN), _outputs(model, X, LEN))


def test_hf_export_decodes_with_the_transformers_processor(tmp_path):
    """The exported directory works with Wav2Vec2Processor: its tokenizer's pad (the CTC blank it drops) is index 0,
    the model's blank, so HF's decoding of HF's logits equals our greedy transcript."""
    transformers = pytest.importorskip("transformers")
    from common.metrics import ctc_greedy_string

    model = _models()["ctc"]
    with torch.no_grad():  # keep the random model off the special symbols 1-3, which the two decoders name apart
        model.w2v_encoder.proj.bias[1:4] -= 100.0
    save_hf(model, str(tmp_path / "hf"), labels=LABELS)
    processor = transformers.Wav2Vec2Processor.from_pretrained(str(tmp_path / "hf"))
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(str(tmp_path / "hf")).eval()
    assert processor.tokenizer.pad_token_id == hf.config.pad_token_id == 0
    inputs = processor(X[0].numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ids = hf(inputs.input_values).logits.argmax(-1)
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + LABELS.split()[::2]
    ours = ctc_greedy_string(_outputs(model, X[:1], None)[0].argmax(-1), symbols)
    assert ours.strip() and processor.batch_decode(ids)[0] == " ".join(ours.replace("|", " ").split())


def test_checkpoints_saved_without_crc32_still_load(tmp_path):
    """torch.serialization.set_crc32_options(False) makes torch.save store a CRC of 0 for every member: nothing to
    verify, not damage."""
    model = _models()["pretrain"]
    path = str(tmp_path / "nocrc.pt")
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(model_checkpoint(model), path)
    finally:
        torch.serialization.set_crc32_options(True)
    import zipfile

    with zipfile.ZipFile(path) as archive:
        assert all(i.CRC == 0 for i in archive.infolist() if i.file_size)
    loaded = read_checkpoint(path)
    assert all(torch.equal(v, loaded["model"][k]) for k, v in model.state_dict().items())
