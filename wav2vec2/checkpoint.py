"""Checkpoint interop: load ours / NVIDIA DLE / fairseq checkpoints and HuggingFace directories; export to HF
and to a fairseq-style checkpoint.

Safety: checkpoints are read with ``torch.load(weights_only=True)`` and an allow-list of what fairseq / NVIDIA
pickles contain (``argparse.Namespace``). Hydra-era fairseq checkpoints also pickle ``omegaconf`` containers and
fairseq meters; those are read by a restricted unpickler that maps exactly those class names to inert record
classes (it never imports or calls anything else), so a checkpoint cannot run code.

Formats recognised (REFERENCE.md §2):
* ours: ``model_config`` + ``model_kind`` (+ NVIDIA-compatible ``args`` with ``mode``);
* NVIDIA DLE: ``args`` (dict or Namespace) containing ``mode`` (pretrain | finetune), ``model``, ``output_labels``;
* fairseq: ``cfg`` (hydra, sections merged) or legacy ``args`` Namespace; CTC models carry the pretraining
  architecture in ``w2v_args``;
* HuggingFace: a directory with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import json
import os
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from common.checkpointing import atomic_torch_save
from common.safetensors_io import load_safetensors, save_safetensors

from .config import Wav2Vec2Config
from .model import Wav2Vec2ForCTC, Wav2Vec2Model

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "read_checkpoint",
    "load_checkpoint",
    "load_model",
    "model_checkpoint",
    "upgrade_state_dict",
    "reference_parameter_layout",
    "load_pretrained_into_ctc",
    "hf_state_dict",
    "from_hf_state_dict",
    "hf_config",
    "config_from_hf",
    "save_hf",
    "save_fairseq",
    "OUR_FORMAT",
]

OUR_FORMAT = "wav2vec2-trainer/1"
PRETRAIN_ONLY = ("quantizer.", "project_q.", "final_proj.", "target_glu.")
CTC_PREFIX = "w2v_encoder.w2v_model."


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or understood; the message names the file."""


# ---------------------------------------------------------------------------------------------------------------------
# Safe reading
# ---------------------------------------------------------------------------------------------------------------------


class _Record:
    """Inert stand-in for an allow-listed foreign class: keeps the pickled state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict-subclass pickles append items
        if self._state is None:
            self._state = {}
        if isinstance(self._state, dict):
            self._state.setdefault("_items", {})[key] = value


def _record_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (_Record,), {"_qualname": qualname})


_FOREIGN_PREFIXES = ("omegaconf.", "fairseq.", "fairseq_cli.")


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows torch's tensor rebuild helpers, plain containers, argparse.Namespace, and inert records for
    omegaconf / fairseq classes. Anything else is refused."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("argparse", "Namespace"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "str"),
        ("builtins", "bool"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch", "float32"),
        ("torch", "float16"),
        ("torch", "bfloat16"),
        ("torch", "int64"),
        ("enum", "Enum"),
        ("typing", "Any"),
        ("pathlib", "PosixPath"),
    }

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles use Python 2 names (__builtin__.long, ...): translate them as pickle itself does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and name.endswith("Storage"):
            return super().find_class(module, name)
        if module.startswith(_FOREIGN_PREFIXES) or module == "omegaconf":
            return _record_class(f"{module}.{name}")
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a checkpoint")


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    load = pickle.load
    __name__ = "restricted_pickle"


def _plain(obj: Any) -> Any:
    """Convert Namespaces / omegaconf records into plain dicts and lists, recursively."""
    if isinstance(obj, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, _Record):
        return _record_to_plain(obj)
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if isinstance(obj, list) else tuple(_plain(v) for v in obj)
    return obj


def _record_to_plain(rec: _Record) -> Any:
    """omegaconf pickles keep their content in ``_content`` (a dict of nodes, or a list for ListConfig); value
    nodes keep theirs in ``_val``."""
    state = rec._state
    if isinstance(state, dict):
        if "_content" in state:
            content = state["_content"]
            if isinstance(content, Mapping):
                return {k: _plain(v) for k, v in content.items()}
            if isinstance(content, (list, tuple)):
                return [_plain(v) for v in content]
            return content  # None or omegaconf's "???" marker
        if "_val" in state:
            return _plain(state["_val"])
        if "_items" in state:
            return {k: _plain(v) for k, v in state["_items"].items()}
        return {k: _plain(v) for k, v in state.items() if not k.startswith("_")}
    return None


def read_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a ``.pt`` checkpoint safely into plain Python containers and tensors."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory; load_model() reads HuggingFace directories")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    _check_zip_integrity(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc) and "GLOBAL" not in str(exc):
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {exc}") from None
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False, pickle_module=_RestrictedPickleModule)
        except pickle.UnpicklingError as exc2:
            raise CheckpointError(f"checkpoint {path} contains a disallowed object: {exc2}") from None
        except Exception as exc2:  # noqa: BLE001 - report any decoding failure with the file name
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {exc2}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a text file: torch's legacy unpickler fails in many ways
        raise CheckpointError(f"{path} is not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary (found {type(obj).__name__})")
    obj = _plain(obj)
    for entry in ("model", "ema_model"):
        _check_finite(obj.get(entry), path, entry)
    return obj


def _check_zip_integrity(path: str) -> None:
    """torch's zip checkpoints carry a CRC-32 per member, which ``torch.load`` does not verify: damage inside a
    tensor (a bad disk block, an interrupted copy) would load as silently wrong weights. One read of the file."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format, or not a checkpoint at all: torch.load tells
    bad = None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:  # saved with torch.serialization.set_crc32_options(False): nothing to check
                    continue
                try:
                    with archive.open(info) as member:
                        while member.read(1 << 24):
                            pass
                except zipfile.BadZipFile:
                    bad = info.filename
                    break
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {exc}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {bad} fails its CRC check (a damaged copy?)")


def _check_finite(state: Any, path: str, entry: str) -> None:
    """Weights with NaN or infinity would make every update skip (training) or every output garbage (inference)."""
    if not isinstance(state, Mapping):
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"checkpoint {path}: {entry} weight {name} has {bad} non-finite value(s) "
                                  f"(NaN or infinity) of {value.numel()}")


# ---------------------------------------------------------------------------------------------------------------------
# State-dict upgrades (the renames the reference itself performs)
# ---------------------------------------------------------------------------------------------------------------------


def upgrade_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP ``module.`` prefixes, undo the reference's inference-time renames of the masked extractor,
    split legacy packed ``in_proj`` / ``qkv`` attention weights, rename a positional conv saved with torch's
    ``parametrizations.weight_norm`` (``parametrizations.weight.original0/1``) to ``weight_g``/``weight_v``, and
    rebuild ``weight_g``/``weight_v`` for a positional conv whose weight norm was removed."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = re.sub(r"(?:^|(?<=\.))module\.", "", key)  # whole "module." path components only (not "submodule.")
        k = re.sub(r"(conv_layers\.\d+)\.conv\.", r"\1.0.", k)
        k = re.sub(r"(conv_layers\.0)\.norm\._group_norm\.", r"\1.2.", k)
        k = re.sub(r"(conv_layers\.0)\.norm\.", r"\1.2.", k)
        k = re.sub(r"(pos_conv\.0)\.parametrizations\.weight\.original([01])$",
                   lambda m: f"{m.group(1)}.weight_{'g' if m.group(2) == '0' else 'v'}", k)
        m = re.match(r"(.*self_attn)\.(in_proj|qkv)_(weight|bias)$", k) or re.match(r"(.*self_attn)\.qkv\.(weight|bias)$", k)
        if m is not None:
            prefix = m.group(1)
            kind = m.group(m.lastindex)
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{kind}"] = chunk.clone()
            continue
        m = re.match(r"(.*pos_conv\.0)\.weight$", k)
        if m is not None:
            v = value
            out[f"{m.group(1)}.weight_v"] = v
            out[f"{m.group(1)}.weight_g"] = v.float().pow(2).sum(dim=(0, 1), keepdim=True).sqrt().to(v.dtype)
            continue
        out[k] = value
    return out


_ATTENTION_KEY = re.compile(r"(.*self_attn)\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$")
_POS_CONV_KEY = re.compile(r"(.*pos_conv\.0)\.(bias|weight_g|weight_v)$")


def reference_parameter_layout(ckpt: Mapping[str, Any]) -> list[list[str]]:
    """The reference trainer's parameter order (its ``model.parameters()``, in which its optimizer state is laid
    out: one flat tensor in mixed precision, one entry per parameter in FP32), as lists of our parameter names: each
    list is one reference parameter, the concatenation of those of ours (a packed ``qkv`` is q, k, v).

    The order is the checkpoint's own ``model`` key order (the modules' registration order), except inside each
    attention block, whose saved keys are split: the reference's ``--mha pyt`` (every recipe) holds ``qkv`` then
    ``out_proj``, fairseq's attention ``k_proj, v_proj, q_proj, out_proj``; and the weight-normalised positional
    convolution registers ``bias`` before ``weight_g`` and ``weight_v``."""
    args = ckpt.get("args")
    mha = args.get("mha") if isinstance(args, Mapping) else getattr(args, "mha", None)
    shapes = {k: torch.empty(tuple(v.shape), device="meta") for k, v in ckpt["model"].items()
              if isinstance(v, torch.Tensor)}
    keys = list(upgrade_state_dict(shapes))  # our names, in the saved order (meta tensors: no copies)
    layout: list[list[str]] = []
    done: set[str] = set()
    for key in keys:
        if key in done:
            continue
        m, p = _ATTENTION_KEY.match(key), _POS_CONV_KEY.match(key)
        if m is not None:
            a = m.group(1)
            if mha == "pyt":
                block = [[f"{a}.{x}_proj.weight" for x in "qkv"], [f"{a}.{x}_proj.bias" for x in "qkv"],
                         [f"{a}.out_proj.weight"], [f"{a}.out_proj.bias"]]
            else:
                block = [[f"{a}.{x}.{w}"] for x in ("k_proj", "v_proj", "q_proj", "out_proj") for w in ("weight", "bias")]
        elif p is not None:
            block = [[f"{p.group(1)}.{x}"] for x in ("bias", "weight_g", "weight_v")]
        else:
            block = [[key]]
        layout.extend(block)
        done.update(name for names in block for name in names)
    return layout


def _load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every weight or none: missing, unexpected and wrongly shaped keys are one CheckpointError naming
    ``source`` and the keys (torch's own shape error names neither the file nor is a CheckpointError)."""
    own = model.state_dict()
    shapes = [f"{k} {list(v.shape)} (model: {list(own[k].shape)})" for k, v in sd.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected or shapes:
        def some(keys: list) -> str:
            return f"{len(keys)} {keys[:8]}{'...' if len(keys) > 8 else ''}"

        raise CheckpointError(
            f"{source}: parameters do not match the model built from its config: missing {some(missing)}, "
            f"unexpected {some(unexpected)}" + (f", other shape {some(shapes)}" if shapes else "")
        )
    model.load_state_dict(sd, strict=True)


def load_pretrained_into_ctc(model: Wav2Vec2ForCTC, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Initialise ``model.w2v_encoder.w2v_model`` from a pretraining model's (or a CTC model's) state dict."""
    sd = upgrade_state_dict(state_dict)
    if any(k.startswith(CTC_PREFIX) for k in sd):
        sd = {k[len(CTC_PREFIX):]: v for k, v in sd.items() if k.startswith(CTC_PREFIX)}
    sd = {k: v for k, v in sd.items() if not k.startswith(PRETRAIN_ONLY)}
    _load_strict(model.w2v_model, sd, source)


# ---------------------------------------------------------------------------------------------------------------------
# Configs from checkpoints
# ---------------------------------------------------------------------------------------------------------------------

#: fairseq CTC-config names that differ from ours
_FAIRSEQ_RENAMES = {"layerdrop": "encoder_layerdrop"}


def _merge_sections(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Hydra ``cfg``: merge its sub-dicts (common, task, model, criterion, ...) into one flat dict."""
    flat: dict[str, Any] = {}
    for value in cfg.values():
        if isinstance(value, Mapping):
            flat.update(value)
    return flat


def _flat_args(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, Mapping):
        if any(isinstance(v, Mapping) and k in ("model", "task", "common") for k, v in args.items()):
            return _merge_sections(args)
        return dict(args)
    return {}


def _renamed(d: Mapping[str, Any]) -> dict[str, Any]:
    return {_FAIRSEQ_RENAMES.get(k, k): v for k, v in d.items()}


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    config: Wav2Vec2Config
    kind: str  # "pretrain" | "ctc"
    source_format: str  # "ours" | "nvidia" | "fairseq" | "hf"
    labels: Optional[str] = None  # dictionary text (dict.ltr.txt) for CTC models when known
    raw: Optional[dict] = None  # the checkpoint dictionary (None for HF)


def _kind_from_state(sd: Mapping[str, torch.Tensor]) -> str:
    return "ctc" if any(k.startswith("w2v_encoder.") for k in sd) else "pretrain"


def _vocab_size(sd: Mapping[str, torch.Tensor], path: str) -> int:
    w = sd.get("w2v_encoder.proj.weight")
    if w is None:
        raise CheckpointError(f"{path}: CTC checkpoint without w2v_encoder.proj.weight")
    return int(w.shape[0])


def _config_and_kind(ckpt: Mapping[str, Any], sd: Mapping[str, torch.Tensor], path: str) -> tuple[Wav2Vec2Config, str, str]:
    kind = _kind_from_state(sd)
    if "model_config" in ckpt:
        cfg = Wav2Vec2Config.from_dict(ckpt["model_config"])
        return cfg, ckpt.get("model_kind", kind), "ours"
    args = ckpt.get("args")
    flat_args = _flat_args(args)
    if flat_args and "mode" in flat_args:  # NVIDIA DLE
        values = _renamed(flat_args)
        # the reference's CLI default for quantize_targets is False; its recipes always pass it
        values.setdefault("quantize_targets", True)
        if kind == "pretrain" and not any(k.startswith("quantizer.") for k in sd):
            values["quantize_targets"] = False
        return Wav2Vec2Config.from_dict(values, base=Wav2Vec2Config(hourglass_transformer=None)), kind, "nvidia"
    cfg_section = ckpt.get("cfg")
    if isinstance(cfg_section, Mapping) and cfg_section:
        model_section = cfg_section.get("model") or {}
        values = _merge_sections(cfg_section)
    elif flat_args:
        model_section = flat_args
        values = dict(flat_args)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint format (keys {sorted(ckpt)[:10]}); expected ours, NVIDIA DLE (args.mode), "
            "fairseq (cfg or args) or a HuggingFace directory"
        )
    if kind == "ctc":
        w2v = model_section.get("w2v_args") if isinstance(model_section, Mapping) else None
        base_values = _flat_args(w2v) if w2v else {}
        if not base_values:
            raise CheckpointError(f"{path}: fairseq CTC checkpoint without w2v_args (the pretraining architecture)")
        merged = dict(base_values)
        for k, v in _renamed(model_section).items():
            if k in Wav2Vec2Config.field_names() and k not in _ARCH_FIELDS:
                merged[k] = v
        values = merged
    values = _renamed(values)
    values["hourglass_transformer"] = values.get("hourglass_transformer")
    if kind == "pretrain":
        values["quantize_targets"] = any(k.startswith("quantizer.") for k in sd)
    pos_depth = values.get("pos_conv_depth", 1)
    if pos_depth not in (None, 1):
        raise CheckpointError(f"{path}: pos_conv_depth={pos_depth} (data2vec-style) is not supported")
    if values.get("layer_type", "transformer") not in (None, "transformer"):
        raise CheckpointError(f"{path}: layer_type={values['layer_type']} (wav2vec2-conformer) is not supported")
    if values.get("quantize_input"):
        raise CheckpointError(f"{path}: quantize_input=True (an input quantizer) is not supported")
    return Wav2Vec2Config.from_dict(values, base=Wav2Vec2Config(hourglass_transformer=None)), kind, "fairseq"


_ARCH_FIELDS = {
    "extractor_mode", "conv_feature_layers", "conv_bias", "encoder_layers", "encoder_embed_dim",
    "encoder_ffn_embed_dim", "encoder_attention_heads", "activation_fn", "layer_norm_first", "conv_pos",
    "conv_pos_groups", "hourglass_transformer", "hourglass_resample", "final_dim", "latent_vars",
    "latent_groups", "latent_dim", "quantize_targets", "normalize",
}


def _build(cfg: Wav2Vec2Config, kind: str, sd: Mapping[str, torch.Tensor], path: str) -> nn.Module:
    if kind == "ctc":
        model: nn.Module = Wav2Vec2ForCTC(cfg, _vocab_size(sd, path))
    else:
        model = Wav2Vec2Model(cfg, pretraining=True)
    _load_strict(model, sd, path)
    return model


def load_checkpoint(path: str, use_ema: bool = False, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint file or HuggingFace directory; the model is returned in eval mode."""
    if os.path.isdir(path):
        return _load_hf_dir(path)
    ckpt = read_checkpoint(path, map_location)
    key = "ema_model" if use_ema else "model"
    sd = ckpt.get(key)
    if use_ema and sd is None:
        raise CheckpointError(f"{path} has no EMA weights (ema_model is empty); train with --ema > 0 or drop --use_ema")
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: no model weights under '{key}' (keys: {sorted(ckpt)[:10]})")
    sd = upgrade_state_dict(sd)
    cfg, kind, fmt = _config_and_kind(ckpt, sd, path)
    model = _build(cfg, kind, sd, path)
    model.eval()
    labels = ckpt.get("output_labels")
    return LoadedCheckpoint(model=model, config=cfg, kind=kind, source_format=fmt, labels=labels, raw=ckpt)


def load_model(path: str, use_ema: bool = False, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load ours / NVIDIA / fairseq checkpoints (pretraining or CTC) or a HuggingFace directory, in eval mode."""
    return load_checkpoint(path, use_ema=use_ema, map_location=map_location).model


def model_checkpoint(
    model: nn.Module, labels: Optional[str] = None, args: Optional[Mapping[str, Any]] = None, **extra: Any
) -> dict:
    """A checkpoint dictionary in our format, readable by the NVIDIA reference too (``args.mode``, ``model``,
    ``output_labels``)."""
    kind = "ctc" if isinstance(model, Wav2Vec2ForCTC) else "pretrain"
    cfg: Wav2Vec2Config = model.cfg  # type: ignore[assignment]
    merged_args = dict(cfg.to_dict())
    merged_args.update(args or {})
    merged_args.setdefault("mode", "finetune" if kind == "ctc" else "pretrain")
    ckpt = {
        "format": OUR_FORMAT,
        "args": merged_args,
        "model": {k: v.detach() for k, v in model.state_dict().items()},
        "model_config": cfg.to_dict(),
        "model_kind": kind,
        "ema_model": None,
    }
    if labels is not None:
        ckpt["output_labels"] = labels
    ckpt.update(extra)
    return ckpt


# ---------------------------------------------------------------------------------------------------------------------
# HuggingFace interop
# ---------------------------------------------------------------------------------------------------------------------

_HF_RULES = [  # (ours, hf) templates on keys without the CTC / "wav2vec2." prefixes
    ("feature_extractor.conv_layers.{i}.0.{p}", "feature_extractor.conv_layers.{i}.conv.{p}"),
    ("feature_extractor.conv_layers.{i}.2.1.{p}", "feature_extractor.conv_layers.{i}.layer_norm.{p}"),
    ("feature_extractor.conv_layers.{i}.2.{p}", "feature_extractor.conv_layers.{i}.layer_norm.{p}"),
    ("layer_norm.{p}", "feature_projection.layer_norm.{p}"),
    ("post_extract_proj.{p}", "feature_projection.projection.{p}"),
    ("mask_emb", "masked_spec_embed"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias"),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("encoder.layers.{i}.self_attn.{proj}.{p}", "encoder.layers.{i}.attention.{proj}.{p}"),
    ("encoder.layers.{i}.self_attn_layer_norm.{p}", "encoder.layers.{i}.layer_norm.{p}"),
    ("encoder.layers.{i}.fc1.{p}", "encoder.layers.{i}.feed_forward.intermediate_dense.{p}"),
    ("encoder.layers.{i}.fc2.{p}", "encoder.layers.{i}.feed_forward.output_dense.{p}"),
    ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.layers.{i}.final_layer_norm.{p}"),
    ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}"),
]
_HF_TOP = [  # pretraining heads live outside "wav2vec2."
    ("quantizer.vars", "quantizer.codevectors"),
    ("quantizer.weight_proj.{p}", "quantizer.weight_proj.{p}"),
    ("project_q.{p}", "project_q.{p}"),
    ("final_proj.{p}", "project_hid.{p}"),
]
_PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias", "proj": r"q_proj|k_proj|v_proj|out_proj"}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    pattern = ""
    for n, part in enumerate(parts):
        pattern += f"(?P<{part}>{_PLACEHOLDERS[part]})" if n % 2 else re.escape(part)
    return re.compile(pattern)


def _sub(rules, key: str, reverse: bool = False) -> Optional[str]:
    """Rename ``key`` by the first matching (ours, hf) template pair, ours->hf or hf->ours."""
    for ours, hf in rules:
        src, dst = (hf, ours) if reverse else (ours, hf)
        m = _template_regex(src).fullmatch(key)
        if m:
            return dst.format(**m.groupdict())
    return None


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict with HuggingFace Wav2Vec2ForPreTraining / Wav2Vec2ForCTC names."""
    cfg: Wav2Vec2Config = model.cfg  # type: ignore[assignment]
    if cfg.hourglass is not None:
        raise ValueError("HuggingFace Wav2Vec2 has no Hourglass encoder: only plain-stack models can be exported")
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("w2v_encoder.proj."):
            out["lm_head." + key.rsplit(".", 1)[1]] = value
            continue
        inner = key[len(CTC_PREFIX):] if key.startswith(CTC_PREFIX) else key
        top = _sub(_HF_TOP, inner)
        if top is not None:
            out[top] = value
            continue
        mapped = _sub(_HF_RULES, inner)
        if mapped is None:
            raise ValueError(f"no HuggingFace name for parameter {key}")
        out["wav2vec2." + mapped] = value
    projection = "wav2vec2.feature_projection.projection."
    if projection + "weight" not in out:
        # fairseq builds no post_extract_proj when the last conv width equals encoder_embed_dim; HF always has the
        # layer, and would fill a missing one at random: export the identity it stands for
        norm = out["wav2vec2.feature_projection.layer_norm.weight"]
        out[projection + "weight"] = torch.eye(norm.numel(), dtype=norm.dtype, device=norm.device)
        out[projection + "bias"] = torch.zeros_like(norm)
    return out


def _drop_identity_projection(sd: dict[str, torch.Tensor], cfg: Wav2Vec2Config, prefix: str) -> None:
    """An HF feature projection that is exactly the identity (what :func:`hf_state_dict` writes for a model without
    ``post_extract_proj``) is dropped when the architecture has none; any other one is left for the loader to
    refuse."""
    if cfg.conv_layers[-1][0] != cfg.encoder_embed_dim:
        return
    weight, bias = sd.get(prefix + "post_extract_proj.weight"), sd.get(prefix + "post_extract_proj.bias")
    if weight is None or bias is None or weight.shape[0] != weight.shape[-1]:
        return
    if torch.equal(weight, torch.eye(weight.shape[0], dtype=weight.dtype)) and not bias.any():
        del sd[prefix + "post_extract_proj.weight"], sd[prefix + "post_extract_proj.bias"]


def from_hf_state_dict(sd: Mapping[str, torch.Tensor], extractor_mode: str = "default") -> dict[str, torch.Tensor]:
    """HuggingFace names -> ours (pretraining names, or CTC names when ``lm_head`` is present).
    ``extractor_mode`` tells where the extractor norms go (GroupNorm ``.2`` vs LayerNorm ``.2.1``)."""
    ctc = any(k.startswith("lm_head.") for k in sd)
    skip = ".2.{p}" if extractor_mode == "layer_norm" else ".2.1.{p}"
    rules = [r for r in _HF_RULES if not r[0].endswith(skip)]
    out = {}
    for key, value in sd.items():
        k = key.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        )
        if k.startswith("lm_head."):
            out["w2v_encoder.proj." + k.rsplit(".", 1)[1]] = value
            continue
        if k.startswith("wav2vec2."):
            mapped = _sub(rules, k[len("wav2vec2."):], reverse=True)
            if mapped is None:
                raise ValueError(f"unknown HuggingFace parameter {key}")
            out[(CTC_PREFIX if ctc else "") + mapped] = value
            continue
        mapped = _sub(_HF_TOP, k, reverse=True)
        if mapped is None:
            if k.startswith(("dropout", "lm_head")):
                continue
            raise ValueError(f"unknown HuggingFace parameter {key}")
        if not ctc:
            out[mapped] = value
    return out


def hf_config(cfg: Wav2Vec2Config, vocab_size: Optional[int] = None, *, transformers_only: bool = False) -> dict[str, Any]:
    """A HuggingFace ``Wav2Vec2Config`` dictionary equivalent to ``cfg`` (plain stacks only).

    The exported ``config.json`` also carries our full config under ``wav2vec2_trainer_config`` so that it loads
    back losslessly; ``transformers_only=True`` leaves that key out, for building a ``transformers.Wav2Vec2Config``.
    """
    if cfg.hourglass is not None:
        raise ValueError("HuggingFace Wav2Vec2 has no Hourglass encoder")
    layers = cfg.conv_layers
    act = {"gelu": "gelu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_fast", "relu": "relu", "tanh": "tanh", "linear": "linear"}
    d: dict[str, Any] = {
        "model_type": "wav2vec2",
        "architectures": ["Wav2Vec2ForCTC" if vocab_size else "Wav2Vec2ForPreTraining"],
        "conv_dim": [l[0] for l in layers],
        "conv_kernel": [l[1] for l in layers],
        "conv_stride": [l[2] for l in layers],
        "conv_bias": cfg.conv_bias,
        "feat_extract_norm": "group" if cfg.extractor_mode == "default" else "layer",
        "feat_extract_activation": "gelu",
        "hidden_size": cfg.encoder_embed_dim,
        "num_hidden_layers": cfg.encoder_layers,
        "num_attention_heads": cfg.encoder_attention_heads,
        "intermediate_size": cfg.encoder_ffn_embed_dim,
        "hidden_act": act[cfg.activation_fn],
        "num_conv_pos_embeddings": cfg.conv_pos,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups,
        "do_stable_layer_norm": cfg.layer_norm_first,
        "layer_norm_eps": 1e-5,
        "hidden_dropout": cfg.dropout,
        "activation_dropout": cfg.activation_dropout,
        "attention_dropout": cfg.attention_dropout,
        "feat_proj_dropout": cfg.dropout_input,
        "feat_quantizer_dropout": cfg.dropout_features,
        "final_dropout": cfg.final_dropout,
        "layerdrop": cfg.encoder_layerdrop,
        "mask_time_prob": cfg.mask_prob,
        "mask_time_length": cfg.mask_length,
        "mask_time_min_masks": cfg.mask_min_masks,
        "mask_feature_prob": cfg.mask_channel_prob,
        "mask_feature_length": cfg.mask_channel_length,
        "num_codevectors_per_group": cfg.latent_vars,
        "num_codevector_groups": cfg.latent_groups,
        "codevector_dim": cfg.vq_dim,
        "proj_codevector_dim": cfg.proj_dim,
        "contrastive_logits_temperature": cfg.logit_temp,
        "num_negatives": cfg.num_negatives,
        "diversity_loss_weight": 0.1,
        "do_normalize": cfg.normalize,
        "pad_token_id": 0,  # CTC blank = index 0 (fairseq's <s>, named <pad> in the exported vocab.json)
        "bos_token_id": 1,
        "eos_token_id": 2,
        "ctc_loss_reduction": "sum",
        "ctc_zero_infinity": True,
    }
    if not transformers_only:
        d["wav2vec2_trainer_config"] = cfg.to_dict()
    if vocab_size:
        d["vocab_size"] = vocab_size
    return d


def config_from_hf(d: Mapping[str, Any]) -> Wav2Vec2Config:
    if "wav2vec2_trainer_config" in d:
        return Wav2Vec2Config.from_dict(d["wav2vec2_trainer_config"])
    act = {"gelu": "gelu", "gelu_new": "gelu_accurate", "gelu_fast": "gelu_fast", "relu": "relu", "tanh": "tanh", "linear": "linear"}
    spec = "[" + ",".join(f"({c},{k},{s})" for c, k, s in zip(d["conv_dim"], d["conv_kernel"], d["conv_stride"])) + "]"
    values = {
        "conv_feature_layers": spec,
        "conv_bias": d.get("conv_bias", False),
        "extractor_mode": "default" if d.get("feat_extract_norm", "group") == "group" else "layer_norm",
        "encoder_embed_dim": d["hidden_size"],
        "encoder_layers": d["num_hidden_layers"],
        "encoder_attention_heads": d["num_attention_heads"],
        "encoder_ffn_embed_dim": d["intermediate_size"],
        "activation_fn": act.get(d.get("hidden_act", "gelu"), "gelu"),
        "conv_pos": d.get("num_conv_pos_embeddings", 128),
        "conv_pos_groups": d.get("num_conv_pos_embedding_groups", 16),
        "layer_norm_first": d.get("do_stable_layer_norm", False),
        "dropout": d.get("hidden_dropout", 0.1),
        "activation_dropout": d.get("activation_dropout", 0.0),
        "attention_dropout": d.get("attention_dropout", 0.0),
        "dropout_input": d.get("feat_proj_dropout", 0.0),
        "dropout_features": d.get("feat_quantizer_dropout", 0.0),
        "final_dropout": d.get("final_dropout", 0.0),
        "encoder_layerdrop": d.get("layerdrop", 0.0),
        "mask_prob": d.get("mask_time_prob", 0.05),
        "mask_length": d.get("mask_time_length", 10),
        "mask_min_masks": d.get("mask_time_min_masks", 2),
        "mask_channel_prob": d.get("mask_feature_prob", 0.0),
        "mask_channel_length": d.get("mask_feature_length", 10),
        "latent_vars": d.get("num_codevectors_per_group", 320),
        "latent_groups": d.get("num_codevector_groups", 2),
        "latent_dim": d.get("codevector_dim", 256),
        "final_dim": d.get("proj_codevector_dim", 256),
        "logit_temp": d.get("contrastive_logits_temperature", 0.1),
        "num_negatives": d.get("num_negatives", 100),
        "normalize": d.get("do_normalize", False),
        "hourglass_transformer": None,
    }
    return Wav2Vec2Config.from_dict(values, base=Wav2Vec2Config(hourglass_transformer=None))


def _load_hf_dir(path: str) -> LoadedCheckpoint:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{path}: not a HuggingFace model directory (no config.json)")
    with open(cfg_path) as f:
        hf_cfg = json.load(f)
    if hf_cfg.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"{path}: a HuggingFace {hf_cfg.get('model_type')!r} model; only wav2vec2 models "
                              "(Wav2Vec2ForPreTraining / Wav2Vec2ForCTC) can be loaded")
    st = os.path.join(path, "model.safetensors")
    bin_path = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        try:
            hf_sd = load_safetensors(st)
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"{st}: {exc}") from None
    elif os.path.exists(bin_path):
        hf_sd = read_checkpoint(bin_path)
    else:
        raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")
    if "do_normalize" not in hf_cfg and "wav2vec2_trainer_config" not in hf_cfg:
        # transformers keeps the waveform normalisation in the feature extractor's preprocessor_config.json, not in
        # config.json (our exports write both); without either, HF's own converter's rule: the layer-norm (Large)
        # models are the normalised ones
        pre = os.path.join(path, "preprocessor_config.json")
        if os.path.exists(pre):
            with open(pre) as f:
                normalize = bool(json.load(f).get("do_normalize", False))
        else:
            normalize = hf_cfg.get("feat_extract_norm", "group") == "layer"
        hf_cfg = dict(hf_cfg, do_normalize=normalize)
    cfg = config_from_hf(hf_cfg)
    sd = from_hf_state_dict(hf_sd, cfg.extractor_mode)
    kind = _kind_from_state(sd)
    prefix = CTC_PREFIX if kind == "ctc" else ""
    if prefix + "mask_emb" not in sd and "wav2vec2.masked_spec_embed" not in hf_sd:
        # HF builds masked_spec_embed only when mask_time_prob or mask_feature_prob > 0; without it HF never
        # masks, and neither do we (mask_prob 0 from its config): a zero embedding stands in, used only if masking
        # is switched on later (fine-tuning with --mask_prob)
        sd[prefix + "mask_emb"] = torch.zeros(cfg.encoder_embed_dim)
    _drop_identity_projection(sd, cfg, prefix)
    if kind == "pretrain" and not any(k.startswith("quantizer.") for k in sd):
        raise CheckpointError(f"{path}: a bare Wav2Vec2Model without pretraining heads is not supported; use ForPreTraining/ForCTC")
    model = _build(cfg, kind, sd, path)
    model.eval()
    labels = None
    vocab = os.path.join(path, "vocab.json")
    if kind == "ctc" and hf_cfg.get("pad_token_id", 0) != 0:
        # HF's CTC blank is its pad token; ours is output 0 (REFERENCE 3.2): another index would decode as a letter
        raise CheckpointError(
            f"{path}: its CTC blank (pad_token_id) is output {hf_cfg.get('pad_token_id')}, ours is output 0; only "
            "vocabularies laid out as HF's converted fairseq models are supported (<pad> <s> </s> <unk> at 0-3, "
            "pad_token_id 0)")
    if os.path.exists(vocab):
        with open(vocab) as f:
            v = json.load(f)
        symbols = [s for s, _ in sorted(v.items(), key=lambda kv: kv[1])]
        if kind == "ctc" and sorted(symbols[:4]) != sorted(["<pad>", "<s>", "</s>", "<unk>"]):
            raise CheckpointError(
                f"{path}: vocab.json starts with {symbols[:4]}, not the special symbols <pad> <s> </s> <unk> that "
                "precede the letters in HF's converted fairseq models (and in our dictionary layout)")
        labels = "".join(f"{s} 1\n" for s in symbols[4:])
    return LoadedCheckpoint(model=model, config=cfg, kind=kind, source_format="hf", labels=labels)


def save_hf(model: nn.Module, out_dir: str, labels: Optional[str] = None) -> None:
    """Write a HuggingFace model directory: config.json, model.safetensors, preprocessor_config.json and, with
    labels, vocab.json + tokenizer_config.json, so that ``Wav2Vec2Processor.from_pretrained`` works.

    The vocabulary names index 0 ``<pad>`` and index 1 ``<s>``, as HF's converted fairseq models do: HF's CTC
    tokenizer drops its pad token as the blank, and our blank is index 0 (fairseq's ``<s>``)."""
    os.makedirs(out_dir, exist_ok=True)
    vocab = model.vocab_size if isinstance(model, Wav2Vec2ForCTC) else None
    cfg: Wav2Vec2Config = model.cfg  # type: ignore[assignment]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(cfg, vocab), f, indent=2)
    save_safetensors(hf_state_dict(model), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    feature_extractor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "processor_class": "Wav2Vec2Processor",
        "feature_size": 1, "sampling_rate": 16000, "padding_value": 0.0, "padding_side": "right",
        "do_normalize": bool(cfg.normalize),
        # GroupNorm extractors must not see an attention mask (HF's own rule); LayerNorm ones (Large) take it
        "return_attention_mask": cfg.extractor_mode == "layer_norm",
    }
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(feature_extractor, f, indent=2)
    if labels is not None:
        symbols = ["<pad>", "<s>", "</s>", "<unk>"] + [line.rsplit(" ", 1)[0] for line in labels.splitlines()
                                                        if line.strip()]
        with open(os.path.join(out_dir, "vocab.json"), "w") as f:
            json.dump({s: i for i, s in enumerate(symbols)}, f, indent=1)
        tokenizer = {"tokenizer_class": "Wav2Vec2CTCTokenizer", "processor_class": "Wav2Vec2Processor",
                     "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                     "word_delimiter_token": "|", "do_lower_case": False}
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump(tokenizer, f, indent=2)


def save_fairseq(model: nn.Module, path: str, labels: Optional[str] = None) -> None:
    """Write a fairseq-style checkpoint (hydra-like ``cfg`` of plain dicts; CTC models nest the pretraining
    architecture under ``cfg.model.w2v_args``)."""
    cfg: Wav2Vec2Config = model.cfg  # type: ignore[assignment]
    arch = cfg.to_dict()
    arch["latent_temp"] = tuple(cfg.latent_temp)
    if isinstance(model, Wav2Vec2ForCTC):
        model_section = {
            "_name": "wav2vec_ctc",
            "w2v_args": {"model": dict(arch, _name="wav2vec2"), "task": {"normalize": cfg.normalize}},
            "final_dropout": cfg.final_dropout,
            "freeze_finetune_updates": cfg.freeze_finetune_updates,
            "apply_mask": cfg.apply_mask,
            "layerdrop": cfg.encoder_layerdrop,
        }
    else:
        model_section = dict(arch, _name="wav2vec2")
    ckpt = {
        "args": None,
        "cfg": {"common": {}, "task": {"_name": "audio_pretraining", "normalize": cfg.normalize}, "model": model_section},
        "model": {k: v.detach() for k, v in model.state_dict().items()},
        "optimizer_history": [],
        "extra_state": {},
        "last_optimizer_state": None,
    }
    if labels is not None:
        ckpt["output_labels"] = labels
    atomic_torch_save(ckpt, path)
