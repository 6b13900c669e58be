"""Typed configuration of the wav2vec 2.0 model family, with named presets.

Field names are the fairseq / NVIDIA DLE argument names, so that the ``args`` / ``cfg`` stored in their
checkpoints map onto this dataclass one to one (see :meth:`Wav2Vec2Config.from_dict`). Defaults are the
reference's command-line defaults unless a comment says otherwise; the presets ``base`` and ``large``
carry the values of ``scripts/pretrain_base.sh`` / ``scripts/pretrain_large.sh``, ``tiny`` is a small
model that trains on two CPU cores in minutes.

Spec strings (``conv_feature_layers``, ``hourglass_transformer``) are parsed with a tiny restricted
evaluator: only integer literals, tuples, lists, ``+`` and ``*`` are accepted, never ``eval``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Mapping, Optional

__all__ = [
    "Wav2Vec2Config",
    "HourglassSpec",
    "parse_conv_layers",
    "parse_hourglass",
    "PRESETS",
    "preset",
]


# ---------------------------------------------------------------------------------------------------------------------
# Safe spec parsing
# ---------------------------------------------------------------------------------------------------------------------


def _literal(node: ast.AST, text: str) -> Any:
    """Evaluate a restricted expression tree: int literals, tuples, lists, list + list, list * int."""
    if isinstance(node, ast.Expression):
        return _literal(node.body, text)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand, text)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e, text) for e in node.elts)
    if isinstance(node, ast.List):
        return [_literal(e, text) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal(node.left, text), _literal(node.right, text)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult):
            if isinstance(left, list) and isinstance(right, int):
                return left * right
            if isinstance(left, int) and isinstance(right, list):
                return right * left
    raise ValueError(f"unsupported expression {ast.dump(node)!s:.60} in spec {text!r}")


# cached: the config's derived properties (conv_layers, hourglass, embed_dim, ...) parse their strings on every access,
# which the trainer's per-micro-batch FLOP count makes a hot path; the callers build new objects from the value and
# never mutate it
@functools.lru_cache(maxsize=64)
def _parse_spec(text: str) -> Any:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse spec {text!r}: {exc.msg}") from None
    return _literal(tree, text)


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse ``conv_feature_layers`` (e.g. ``[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]*2``) into
    a list of (out_channels, kernel, stride)."""
    value = _parse_spec(spec)
    if not isinstance(value, list) or not value:
        raise ValueError(f"conv_feature_layers must be a non-empty list of (dim, kernel, stride): {spec!r}")
    layers = []
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 3 and all(isinstance(v, int) and v > 0 for v in item)):
            raise ValueError(f"conv_feature_layers entry {item!r} is not a (dim, kernel, stride) triple: {spec!r}")
        layers.append(item)
    return layers


@dataclass(frozen=True)
class HourglassSpec:
    """``[n_pre, (n_shortened, factor), n_post]`` of the Hourglass Transformer (``--hourglass_transformer``)."""

    n_pre: int
    n_shortened: int
    factor: int
    n_post: int

    @property
    def num_layers(self) -> int:
        return self.n_pre + self.n_shortened + self.n_post


def parse_hourglass(spec: Optional[str]) -> Optional[HourglassSpec]:
    """Parse ``"[2,(8,4),2]"``; ``None`` or an empty string means no Hourglass."""
    if spec is None or not str(spec).strip():
        return None
    value = _parse_spec(str(spec))
    ok = (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], int)
        and isinstance(value[1], tuple)
        and len(value[1]) == 2
        and all(isinstance(v, int) for v in value[1])
        and isinstance(value[2], int)
    )
    if not ok:
        raise ValueError(f"hourglass_transformer must look like [n_pre,(n_shortened,factor),n_post], got {spec!r}")
    n_pre, (n_short, factor), n_post = value
    if min(n_pre, n_short, n_post) < 0 or factor < 1:
        raise ValueError(f"hourglass_transformer needs non-negative layer counts and factor >= 1: {spec!r}")
    return HourglassSpec(n_pre, n_short, factor, n_post)


# ---------------------------------------------------------------------------------------------------------------------
# The configuration
# ---------------------------------------------------------------------------------------------------------------------

DEFAULT_CONV_LAYERS = "[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]+[(512,2,2)]"


@dataclass
class Wav2Vec2Config:
    """All model hyper-parameters. Base / Large values in comments are the reference recipes'."""

    # --- feature extractor -----------------------------------------------------------------------------------------
    extractor_mode: str = "default"  # "default" (GroupNorm on layer 0; Base) | "layer_norm" (LN on every layer; Large)
    conv_feature_layers: str = DEFAULT_CONV_LAYERS  # (dim, kernel, stride) per layer; total stride 320
    conv_bias: bool = False  # Base False, Large True
    feature_grad_mult: float = 0.1  # gradient scale into the extractor; 0 freezes it (fine-tuning); Large 1.0
    #: Use per-utterance (valid-length) GroupNorm statistics whenever lengths are known, in training too.
    #: The reference does this only at inference (REFERENCE-QUIRKS Q12); see docs/DEVIATIONS.md.
    masked_feature_extractor: bool = True

    # --- transformer encoder ---------------------------------------------------------------------------------------
    encoder_layers: int = 12  # Large 24 (ignored when hourglass_transformer is set)
    encoder_embed_dim: int = 768  # C; Large 1024
    encoder_ffn_embed_dim: int = 3072  # Large 4096
    encoder_attention_heads: int = 12  # Large 16
    activation_fn: str = "gelu"  # gelu | gelu_accurate | gelu_fast | relu | tanh | linear
    layer_norm_first: bool = False  # pre-LN (Large) vs post-LN (Base)
    conv_pos: int = 128  # positional conv kernel
    conv_pos_groups: int = 16
    #: "[n_pre,(n_shortened,factor),n_post]" or None (plain stack). Base recipe: "[2,(8,4),2]".
    hourglass_transformer: Optional[str] = None
    hourglass_resample: str = "naive"  # naive (avg-pool / repeat) | linear

    # --- dropouts ----------------------------------------------------------------------------------------------------
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.1
    dropout_features: float = 0.1

    # --- quantizer / contrastive task -------------------------------------------------------------------------------
    final_dim: int = 256  # D; Large 768; <= 0 means encoder_embed_dim (fairseq / reference rule, see proj_dim)
    quantize_targets: bool = True  # reference CLI default is False but every recipe passes it (see DEVIATIONS)
    latent_vars: int = 320  # V entries per group
    latent_groups: int = 2  # G
    latent_dim: int = 0  # vq_dim; 0 -> final_dim
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)  # (start, end, decay per update); Large end 0.1
    quantizer_depth: int = 1
    quantizer_factor: int = 3
    combine_groups: bool = False  # share one codebook across groups
    num_negatives: int = 100
    cross_sample_negatives: int = 0
    logit_temp: float = 0.1
    target_glu: bool = False

    # --- masking ------------------------------------------------------------------------------------------------------
    mask_prob: float = 0.5  # reference CLI default; every preset uses the recipes' 0.65
    mask_length: int = 10
    mask_selection: str = "static"  # static | uniform | normal | poisson
    mask_other: float = 0.0
    no_mask_overlap: bool = False
    mask_min_space: int = 1
    mask_min_masks: int = 2  # hard-coded 2 in the reference
    require_same_masks: bool = True
    mask_dropout: float = 0.0
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    mask_channel_selection: str = "static"
    mask_channel_other: float = 0.0
    no_mask_channel_overlap: bool = False
    mask_channel_min_space: int = 1
    mask_channel_before: bool = False

    # --- FP32 stabilising switches (reference --fp32_* flags) --------------------------------------------------------
    fp32_transformer_layernorm: bool = False
    fp32_mha_softmax: bool = False  # reference asserts; here: attention computed in float32
    fp32_cosine_sim: bool = False
    fp32_pos_conv: bool = False
    fp32_conv_norms: bool = False

    # --- data-side value stored with the model (fine-tuning/inference read it from the checkpoint) -----------------
    normalize: bool = False  # per-utterance waveform normalisation; Large True

    # --- CTC fine-tuning head (Wav2VecEncoder / Wav2VecCtc) ---------------------------------------------------------
    final_dropout: float = 0.0
    freeze_finetune_updates: int = 0
    apply_mask: bool = True  # mask during fine-tuning (training mode only)
    blank_weight: float = 0.0
    blank_mode: str = "add"  # add | set

    # ------------------------------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.latent_temp = tuple(float(v) for v in self.latent_temp)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor_mode must be 'default' or 'layer_norm', got {self.extractor_mode!r}")
        parse_conv_layers(self.conv_feature_layers)
        hg = parse_hourglass(self.hourglass_transformer)
        if hg is not None and self.layer_norm_first:
            raise ValueError("the Hourglass encoder requires post-LN (layer_norm_first=False), as in the reference")
        if self.hourglass_resample not in ("naive", "linear"):
            raise ValueError(f"hourglass_resample must be 'naive' or 'linear', got {self.hourglass_resample!r}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError("encoder_embed_dim must be divisible by encoder_attention_heads")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError("encoder_embed_dim must be divisible by conv_pos_groups")
        if self.vq_dim % self.latent_groups:
            raise ValueError("the quantizer dimension must be divisible by latent_groups")
        if len(self.latent_temp) != 3:
            raise ValueError("latent_temp is (start, end, decay)")
        for name in ("mask_selection", "mask_channel_selection"):
            if getattr(self, name) not in ("static", "uniform", "normal", "poisson"):
                raise ValueError(f"{name} must be static|uniform|normal|poisson")
        if self.blank_mode not in ("add", "set"):
            raise ValueError("blank_mode must be 'add' or 'set'")

    # derived ---------------------------------------------------------------------------------------------------------
    @property
    def conv_layers(self) -> list[tuple[int, int, int]]:
        return parse_conv_layers(self.conv_feature_layers)

    @property
    def hourglass(self) -> Optional[HourglassSpec]:
        return parse_hourglass(self.hourglass_transformer)

    @property
    def num_layers(self) -> int:
        hg = self.hourglass
        return hg.num_layers if hg is not None else self.encoder_layers

    @property
    def embed_dim(self) -> int:
        """E: width of the feature extractor output."""
        return self.conv_layers[-1][0]

    @property
    def proj_dim(self) -> int:
        """D actually built: ``final_dim``, or C when ``final_dim <= 0`` (fairseq's default 0 means "= C")."""
        return self.final_dim if self.final_dim > 0 else self.encoder_embed_dim

    @property
    def vq_dim(self) -> int:
        return self.latent_dim if self.latent_dim > 0 else self.proj_dim

    @property
    def total_stride(self) -> int:
        s = 1
        for _, _, stride in self.conv_layers:
            s *= stride
        return s

    # (de)serialisation -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latent_temp"] = list(self.latent_temp)
        return d

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: Optional["Wav2Vec2Config"] = None) -> "Wav2Vec2Config":
        """Build from a flat mapping (ours, NVIDIA ``args`` or merged fairseq ``cfg``); unknown keys are ignored.

        ``base`` supplies the values of keys that ``values`` does not have (default: this class's defaults).
        A fairseq checkpoint lacking ``hourglass_transformer`` therefore loads as a plain stack.
        """
        current = (base or cls()).to_dict()
        names = cls.field_names()
        for key, value in values.items():
            if key not in names:
                continue
            if key == "latent_temp" and isinstance(value, str):
                value = tuple(float(v) for v in value.replace(",", " ").strip("()[] ").split())
            if key == "hourglass_transformer" and value is not None and not str(value).strip():
                value = None
            current[key] = value
        current["latent_temp"] = tuple(current["latent_temp"])
        return cls(**current)

    def replace(self, **changes: Any) -> "Wav2Vec2Config":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------


def _base() -> Wav2Vec2Config:
    """pretrain_base.sh: 95.0M parameters, Hourglass [2,(8,4),2] (set ``hourglass_transformer=None`` for the plain
    12-layer stack of fairseq's Base)."""
    return Wav2Vec2Config(
        attention_dropout=0.1,
        mask_prob=0.65,
        hourglass_transformer="[2,(8,4),2]",
    )


def _large() -> Wav2Vec2Config:
    """pretrain_large.sh: 24 pre-LN layers, layer-norm extractor with conv bias."""
    return Wav2Vec2Config(
        extractor_mode="layer_norm",
        conv_bias=True,
        normalize=True,
        feature_grad_mult=1.0,
        encoder_layers=24,
        encoder_embed_dim=1024,
        encoder_ffn_embed_dim=4096,
        encoder_attention_heads=16,
        layer_norm_first=True,
        final_dim=768,
        latent_temp=(2.0, 0.1, 0.999995),
        mask_prob=0.65,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        dropout_input=0.0,
        dropout_features=0.0,
    )


def _tiny() -> Wav2Vec2Config:
    """A small model for the CPU demo and the tests: same topology as Base (GroupNorm extractor, post-LN,
    Hourglass-capable), narrow and shallow. ~1.0M parameters."""
    return Wav2Vec2Config(
        # narrow early layers: the conv stack dominates a small model's step (2x faster than 128 everywhere)
        conv_feature_layers="[(64,10,5)]+[(64,3,2)]*4+[(128,2,2)]*2",
        encoder_layers=4,
        encoder_embed_dim=144,
        encoder_ffn_embed_dim=384,
        encoder_attention_heads=4,
        conv_pos=32,
        conv_pos_groups=8,
        final_dim=64,
        latent_vars=64,
        latent_groups=2,
        latent_temp=(2.0, 0.5, 0.998),  # anneals to 0.5 in ~700 updates: demo-length schedules
        num_negatives=50,
        mask_prob=0.65,
        encoder_layerdrop=0.0,
        attention_dropout=0.1,
        feature_grad_mult=1.0,
    )


PRESETS = {"base": _base, "large": _large, "tiny": _tiny}


def preset(name: str, **overrides: Any) -> Wav2Vec2Config:
    """Return a fresh config of the named preset (``base``, ``large``, ``tiny``) with ``overrides`` applied."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    cfg = factory()
    return cfg.replace(**overrides) if overrides else cfg
