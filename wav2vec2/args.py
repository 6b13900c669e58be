"""Model flags of ``train.py`` / ``inference.py`` (REFERENCE.md §8.1 dropout+masking, §8.2, §8.3) and their
mapping onto :class:`~wav2vec2.config.Wav2Vec2Config`.

``--preset {base,large,tiny}`` (ours) sets the defaults of every architecture flag to a preset's values; without it
the defaults are the reference's command-line defaults (with ``--quantize_targets`` and ``--infonce`` on, see
docs/DEVIATIONS.md).

:data:`UNIMPLEMENTED_PRETRAINING_FLAGS` are the reference's experimental pretraining flags that this model does not
implement: they parse with the reference's defaults, and a value we cannot honour is refused at parse time.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

from common.args import CompatFlag, add_compat_flags, str2bool

from .config import PRESETS, Wav2Vec2Config

__all__ = ["add_dropout_and_masking_args", "add_finetuning_args", "add_pretraining_args", "config_from_args",
           "preset_defaults", "ARCHITECTURE_FLAGS", "INFONCE_FLAG", "UNIMPLEMENTED_PRETRAINING_FLAGS"]

_D = Wav2Vec2Config()

#: flags that define the architecture: in fine-tuning they come from the pretrained checkpoint
ARCHITECTURE_FLAGS = (
    "extractor_mode", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
    "activation_fn", "final_dim", "layer_norm_first", "conv_feature_layers", "conv_bias", "logit_temp",
    "quantize_targets", "target_glu", "quantizer_depth", "quantizer_factor", "latent_vars", "latent_groups",
    "latent_dim", "num_negatives", "cross_sample_negatives", "conv_pos", "conv_pos_groups", "latent_temp",
    "normalize", "hourglass_transformer", "hourglass_resample", "combine_groups",
)


#: ``--infonce``: the reference's switch defaults to off, but its non-InfoNCE loss fails (REFERENCE.md §9.1 #22)
INFONCE_FLAG = CompatFlag("--infonce", True, bool, (True,),
                          "pretraining always uses the InfoNCE cross-entropy; the binary cross-entropy loss (InfoNCE "
                          "off) is not implemented (it fails with a shape error in the reference)")

_SPECTROGRAM = ("only read by the spectrogram front-end (--use_spectrogram_features), which is not implemented: "
                "no effect")

#: reference pretraining flags (REFERENCE.md §8.3, §1.17) whose feature this model does not implement
UNIMPLEMENTED_PRETRAINING_FLAGS = (
    CompatFlag("--quantize_input", False, bool, (False,),
               "quantizing the encoder input is not implemented (the reference crashes on it)"),
    CompatFlag("--negatives_from_everywhere", False, bool, (False,),
               "negatives are drawn from the masked frames of the same utterance only (the recipes' setting)"),
    CompatFlag("--codebook_negatives", 0, int, (0,), "negatives sampled from the codebook are not implemented"),
    CompatFlag("--use_spectrogram_features", False, bool, (False,),
               "the experimental mel-filterbank front-end is not implemented (broken in the reference)"),
    CompatFlag("--rotary_embeddings", False, bool, (False,),
               "rotary position embeddings are not implemented (experimental in the reference)"),
    CompatFlag("--spectrogram_feature_stacking", 1, int, None, _SPECTROGRAM),
    CompatFlag("--spectrogram_feature_subsampling", 1, int, None, _SPECTROGRAM),
    CompatFlag("--spectrogram_window_size", 0.02, float, None, _SPECTROGRAM),
    CompatFlag("--spectrogram_window_stride", 0.01, float, None, _SPECTROGRAM),
    CompatFlag("--spectrogram_n_filt", 80, int, None, _SPECTROGRAM),
)


def add_dropout_and_masking_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("dropout")
    g.add_argument("--dropout", type=float, default=_D.dropout, help="transformer dropout")
    g.add_argument("--attention_dropout", type=float, default=_D.attention_dropout, help="dropout on attention probabilities")
    g.add_argument("--activation_dropout", type=float, default=_D.activation_dropout, help="dropout after the FFN activation")
    g.add_argument("--dropout_input", type=float, default=_D.dropout_input, help="dropout on projected features before masking")
    g.add_argument("--dropout_features", type=float, default=_D.dropout_features, help="dropout on the unmasked targets")
    g.add_argument("--feature_grad_mult", type=float, default=_D.feature_grad_mult,
                   help="gradient scale into the conv extractor (0: frozen)")
    g.add_argument("--encoder_layerdrop", "--layerdrop", type=float, default=_D.encoder_layerdrop, help="LayerDrop probability")

    g = parser.add_argument_group("input masking")
    g.add_argument("--apply_mask", action="store_true", help="fine-tuning: mask time/channels during training")
    g.add_argument("--mask_length", type=int, default=_D.mask_length, help="time-span length")
    g.add_argument("--mask_prob", type=float, default=_D.mask_prob, help="time-mask probability (x T / mask_length spans)")
    g.add_argument("--require_same_masks", type=str2bool, default=True, help="equal masked counts across a batch")
    g.add_argument("--mask_selection", default="static", choices=["static", "uniform", "normal", "poisson"])
    g.add_argument("--mask_other", type=float, default=0.0, help="secondary span-length parameter")
    g.add_argument("--no_mask_overlap", type=str2bool, default=False, help="non-overlapping time spans")
    g.add_argument("--mask_min_space", type=int, default=1, help="min gap between non-overlapping spans")
    g.add_argument("--mask_channel_length", type=int, default=10, help="channel-span length")
    g.add_argument("--mask_channel_prob", type=float, default=0.0, help="channel-mask probability")
    g.add_argument("--mask_channel_before", type=str2bool, default=False, help="channel masking before time masking")
    g.add_argument("--mask_channel_selection", default="static", choices=["static", "uniform", "normal", "poisson"])
    g.add_argument("--mask_channel_other", type=float, default=0.0)
    g.add_argument("--no_mask_channel_overlap", type=str2bool, default=False)
    g.add_argument("--mask_channel_min_space", type=int, default=1)
    g.add_argument("--mask_dropout", type=float, default=0.0, help="fraction of masked frames dropped per utterance")


def add_finetuning_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--final_dropout", type=float, default=0.0, help="dropout before the CTC projection")
    g.add_argument("--w2v_path", default=None, help="pretrained checkpoint (ours, NVIDIA's, fairseq's, HF directory)")
    g.add_argument("--blank_weight", type=float, default=0.0, help="added to / set as the blank logit at inference")
    g.add_argument("--blank_mode", default="add", choices=["add", "set"])
    g.add_argument("--labels", default="ltr", help="label extension; dictionary dict.<labels>.txt")
    g.add_argument("--freeze_finetune_updates", type=int, default=0, help="updates during which only the projection trains")


def add_pretraining_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="(ours) take every architecture default from a preset (base = pretrain_base.sh)")
    g.add_argument("--extractor_mode", default=_D.extractor_mode, choices=["default", "layer_norm"])
    g.add_argument("--encoder_layers", type=int, default=_D.encoder_layers)
    g.add_argument("--encoder_embed_dim", type=int, default=_D.encoder_embed_dim)
    g.add_argument("--encoder_ffn_embed_dim", type=int, default=_D.encoder_ffn_embed_dim)
    g.add_argument("--encoder_attention_heads", type=int, default=_D.encoder_attention_heads)
    g.add_argument("--activation_fn", default=_D.activation_fn)
    g.add_argument("--final_dim", type=int, default=_D.final_dim)
    g.add_argument("--layer_norm_first", action="store_true", default=_D.layer_norm_first)
    g.add_argument("--conv_feature_layers", default=_D.conv_feature_layers)
    g.add_argument("--conv_bias", action="store_true", default=_D.conv_bias)
    g.add_argument("--logit_temp", type=float, default=_D.logit_temp)
    g.add_argument("--quantize_targets", type=str2bool, nargs="?", const=True, default=True,
                   help="Gumbel-quantized targets (on; the reference's CLI default is off but every recipe sets it)")
    g.add_argument("--target_glu", action="store_true", default=False)
    g.add_argument("--quantizer_depth", type=int, default=_D.quantizer_depth)
    g.add_argument("--quantizer_factor", type=int, default=_D.quantizer_factor)
    g.add_argument("--latent_vars", type=int, default=_D.latent_vars)
    g.add_argument("--latent_groups", type=int, default=_D.latent_groups)
    g.add_argument("--latent_dim", type=int, default=_D.latent_dim)
    g.add_argument("--num_negatives", type=int, default=_D.num_negatives)
    g.add_argument("--cross_sample_negatives", type=int, default=_D.cross_sample_negatives)
    g.add_argument("--conv_pos", type=int, default=_D.conv_pos)
    g.add_argument("--conv_pos_groups", type=int, default=_D.conv_pos_groups)
    g.add_argument("--latent_temp", type=float, nargs=3, default=list(_D.latent_temp), help="max min decay")
    g.add_argument("--normalize", action="store_true", default=_D.normalize, help="per-utterance waveform normalisation")
    g.add_argument("--hourglass_transformer", default=None, help='e.g. "[2,(8,4),2]"; empty: plain stack')
    g.add_argument("--hourglass_resample", default="naive", choices=["naive", "linear"])

    g = parser.add_argument_group("reference flags not implemented here")
    add_compat_flags(g, UNIMPLEMENTED_PRETRAINING_FLAGS)

    g = parser.add_argument_group("criterion")
    add_compat_flags(g, [INFONCE_FLAG])
    g.add_argument("--loss_weights", type=float, nargs="+", default=[0.1, 10.0], help="diversity and feature-penalty weights")
    g.add_argument("--log_keys", nargs="*", default=["prob_perplexity", "code_perplexity", "temp"])


#: recipe values of a preset that are not model fields (the criterion's): pretrain_large.sh's --loss_weights 0.1 0.0
PRESET_TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {"large": {"loss_weights": [0.1, 0.0]}}


def preset_defaults(name: str) -> dict[str, Any]:
    """Parser defaults that make ``--preset NAME`` select that preset's architecture (and dropout/mask) values, and
    its recipe's criterion weights."""
    cfg = PRESETS[name]()
    d = cfg.to_dict()
    d["latent_temp"] = list(cfg.latent_temp)
    d.update(PRESET_TRAINING_DEFAULTS.get(name, {}))
    return d


def config_from_args(args: argparse.Namespace, base: Optional[Wav2Vec2Config] = None) -> Wav2Vec2Config:
    """Overlay every flag that names a config field onto ``base`` (fine-tuning: the pretrained checkpoint's config,
    whose architecture fields are kept; pretraining: the reference defaults)."""
    values = {k: v for k, v in vars(args).items() if k in Wav2Vec2Config.field_names()}
    if base is not None:
        for k in ARCHITECTURE_FLAGS:
            values.pop(k, None)
    if "latent_temp" in values:
        values["latent_temp"] = tuple(values["latent_temp"])
    if values.get("hourglass_transformer") == "":
        values["hourglass_transformer"] = None
    return Wav2Vec2Config.from_dict(values, base=base or Wav2Vec2Config())
