"""Model-agnostic command-line flags of the training and inference entry points.

Names and defaults are the reference's (REFERENCE.md §8.1); model flags live in ``wav2vec2/args.py``. Flags that the
reference parses with ``type=bool`` (any non-empty string is True there) are parsed properly here: ``true/false``,
``1/0``, ``yes/no``.

:class:`CompatFlag` / :func:`add_compat_flags` accept reference flags whose feature we do not implement: a user's
reference command line parses, the reference's default value is accepted, and any other value stops at parse time
with an error naming the flag (docs/DEVIATIONS.md lists each one).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

__all__ = ["str2bool", "add_common_args", "add_inference_args", "positive_int", "non_negative_float", "CompatFlag",
           "add_compat_flags"]


def str2bool(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return v


def non_negative_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value!r}")
    return v


@dataclass(frozen=True)
class CompatFlag:
    """A reference flag accepted for compatibility.

    Attributes:
        name: the option string, e.g. ``"--quantize_input"``.
        default: its parsed default (the reference's, unless docs/DEVIATIONS.md says otherwise).
        type: the value parser; ``bool`` makes a switch (``--flag`` alone means True, ``--flag false`` is accepted).
        accepted: the values we support; ``None``: any value (the flag has no effect here, as in the reference).
        note: what we do instead; shown by ``-h`` and, for a refused value, in the error message.
    """

    name: str
    default: Any
    type: Callable[[str], Any]
    accepted: Optional[tuple] = None
    note: str = ""


class _CompatAction(argparse.Action):
    """Stores the value after checking it against the flag's ``accepted`` values (``parser.error`` otherwise)."""

    def __init__(self, option_strings, dest, spec: CompatFlag, **kwargs):
        self.spec = spec
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        spec = self.spec
        if spec.accepted is not None and values not in spec.accepted:
            allowed = ", ".join(str(v) for v in spec.accepted)
            given = option_string if spec.type is bool and values is True else f"{option_string} {values}"
            parser.error(f"{given} is not supported: {spec.note} (accepted: {allowed}; see docs/DEVIATIONS.md)")
        setattr(namespace, self.dest, values)


def add_compat_flags(group, flags: Sequence[CompatFlag]) -> None:
    """Register every :class:`CompatFlag` of ``flags`` on ``group`` (a parser or an argument group)."""
    for spec in flags:
        kwargs: dict = dict(default=spec.default, action=_CompatAction, spec=spec)
        if spec.type is bool:
            kwargs.update(type=str2bool, nargs="?", const=True)
        else:
            kwargs.update(type=spec.type)
        if spec.accepted is None:
            kwargs["help"] = spec.note
        else:
            kwargs["help"] = f"{spec.note}; accepted: {', '.join(str(v) for v in spec.accepted)}"
        group.add_argument(spec.name, **kwargs)


def add_common_args(parser: argparse.ArgumentParser, inference: bool = False) -> None:
    """Training setup, I/O, checkpointing, precision, dataset, optimisation and LR-schedule flags.

    ``inference``: the I/O flags as ``inference.py`` reads them (its log file name; ``--output_dir`` optional, as
    transcribing needs none: ``inference.py`` checks it in the other modes)."""
    g = parser.add_argument_group("training setup")
    g.add_argument("--epochs_this_job", type=int, default=0, help="stop after this many epochs in this job (0: no limit)")
    g.add_argument("--updates_this_job", type=int, default=0,
                   help="(ours) stop after this many updates in this job, saving a resumable checkpoint (0: no limit)")
    g.add_argument("--cudnn_benchmark", action="store_true", help="enable the cuDNN autotuner")
    g.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                   help="device index of this process (torchrun sets LOCAL_RANK)")
    g.add_argument("--optimizer", default="adam", choices=["adam"], help="only Adam(W) is supported, as in the reference")
    g.add_argument("--ema", type=non_negative_float, default=0.0, help="EMA decay of the weights (0: off)")
    g.add_argument("--seed", type=int, default=1, help="base seed of every random stream")
    g.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    g.add_argument("--device", default=None, help="(ours) explicit torch device (default: cuda:<local_rank> if available, else cpu)")

    g = parser.add_argument_group("I/O and logging")
    if inference:
        g.add_argument("--output_dir", default=None,
                       help="where the dllogger JSON log goes (required, except with --transcribe_wav / "
                            "--transcribe_filelist: without it they write no log file)")
        g.add_argument("--log_file", default=None, help="dllogger JSON log (default <output_dir>/nvlog_infer.json)")
    else:
        g.add_argument("--output_dir", required=True, help="logs, TensorBoard events and checkpoints")
        g.add_argument("--log_file", default=None, help="dllogger JSON log (default <output_dir>/nvlog.json)")
    g.add_argument("--log_frequency", type=positive_int, default=1, help="updates between train-scope log lines")
    g.add_argument("--benchmark_epochs_num", type=int, default=3, help="number of last epochs averaged into train_benchmark")
    if not inference:
        g.add_argument("--peak_tflops", type=non_negative_float, default=None,
                       help="(ours) per-device TFLOP/s that the logged mfu divides by (default: the dense matmul rate "
                            "of the run's precision, measured at start-up; 0: no mfu)")

    g = parser.add_argument_group("checkpointing")
    g.add_argument("--no_save", action="store_true", help="never write checkpoints")
    g.add_argument("--resume", action="store_true", help="resume from the newest loadable checkpoint in output_dir")
    g.add_argument("--ckpt", default=None, help="checkpoint to start from when not resuming")
    g.add_argument("--save_frequency", type=int, default=10, help="save every N epochs (and on a new best)")
    g.add_argument("--save_interval_updates", type=int, default=0,
                   help="(ours) also save a resumable checkpoint every N updates (0: epoch ends only); the retention rule keeps "
                        "the newest two and those nearest --keep_milestones")
    g.add_argument("--keep_milestones", type=int, nargs="*", default=[100, 200, 300, 400],
                   help="update numbers whose nearest checkpoints are kept")
    g.add_argument("--allow_data_plan_change", action="store_true",
                   help="(ours) resume although the world size, seed, manifest or batch settings changed: the saved epoch "
                        "goes on from the same fraction of its new batches (default: refuse, as the position would "
                        "not be exact)")

    g = parser.add_argument_group("precision")
    g.add_argument("--amp", action="store_true",
                   help=("inference: --fp16 unless --bf16 is given (the reference's --amp)" if inference else
                         "accepted for compatibility; --fp16/--bf16 select the precision"))
    g.add_argument("--fp16", action="store_true", help="float16 mixed precision with dynamic loss scaling")
    g.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (autocast; also on CPU)")
    g.add_argument("--tf32", type=str2bool, default=True, help="(ours) allow TF32 matmul/cuDNN on Ampere+ GPUs (the reference: on through its container's defaults)")
    g.add_argument("--min_loss_scale", type=float, default=1e-4, help="dynamic loss-scale floor; reaching it stops training")
    g.add_argument("--fp16_init_scale", type=int, default=128, help="initial dynamic loss scale")
    g.add_argument("--fp32_transformer_layernorm", action="store_true", help="transformer-layer LayerNorms in float32")
    g.add_argument("--fp32_mha_softmax", action="store_true", help="attention (incl. softmax) in float32")
    g.add_argument("--fp32_cosine_sim", action="store_true", help="contrastive cosine similarity in float32")
    g.add_argument("--fp32_pos_conv", action="store_true", help="positional convolution in float32")
    g.add_argument("--fp32_conv_norms", action="store_true", help="feature-extractor norms in float32")
    g.add_argument("--mha", default="fairseq", choices=["fairseq", "pyt"],
                   help="the reference's attention implementation switch (recipes: pyt); both values run the same "
                        "attention here (SDPA, fairseq parameter names), so the flag has no effect")

    g = parser.add_argument_group("dataset")
    g.add_argument("--data", default="/workspace/fairseq/librispeech", help="directory with <subset>.tsv/.ltr/dict files")
    g.add_argument("--train_subset", default="train", help="training filelist base name")
    g.add_argument("--valid_subset", default="valid", help="validation filelist base name")
    g.add_argument("--num_concat_batches", type=positive_int, default=1, help="max_tokens batches per forward")
    g.add_argument("--num_workers", type=int, default=6, help="data-loader worker processes")
    g.add_argument("--skip_invalid_size_inputs_valid_test", action="store_true",
                   help="skip (instead of fail on) validation utterances longer than max_tokens_valid")
    g.add_argument("--max_tokens", type=positive_int, default=1400000, help="max padded samples per (sub-)batch")
    g.add_argument("--max_tokens_valid", type=positive_int, default=1400000, help="same for validation")
    g.add_argument("--required_batch_size_multiple", type=positive_int, default=8, help="batch sizes are multiples of this")
    g.add_argument("--required_seq_len_multiple", type=int, default=2, help="accepted for compatibility (unused)")
    g.add_argument("--batch_size", type=int, default=None, help="max utterances per batch (None: unlimited)")
    g.add_argument("--batch_size_valid", type=int, default=None, help="same for validation")
    g.add_argument("--sample_rate", type=positive_int, default=16000, help="required sample rate (no resampling)")
    g.add_argument("--enable_padding", action="store_true", help="pad instead of crop in pretraining")
    g.add_argument("--min_sample_size", type=int, default=None, help="training: skip utterances shorter than this")
    g.add_argument("--max_sample_size", type=int, default=None, help="training: crop longer utterances to this")
    g.add_argument("--num_batch_buckets", type=int, default=0, help="padding buckets (0: off)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--max_update", type=positive_int, default=400000, help="total number of updates")
    g.add_argument("--update_freq", type=positive_int, nargs="+", default=[64], help="micro-batches per update (first used)")
    g.add_argument("--lr", type=float, nargs="+", default=[0.0005], help="peak learning rate (first used)")
    g.add_argument("--adam_betas", type=float, nargs=2, default=[0.9, 0.98], help="Adam betas")
    g.add_argument("--adam_eps", type=float, default=1e-6, help="Adam epsilon")
    g.add_argument("--weight_decay", type=float, default=0.01, help="decoupled weight decay (all parameters)")
    g.add_argument("--clip_norm", type=non_negative_float, default=0.0, help="global gradient-norm clip (0: off)")
    g.add_argument("--lr_policy", default="poly", choices=["poly", "exp"], help="learning-rate schedule")
    g.add_argument("--warmup_updates", type=int, default=32000, help="linear warm-up length")
    g.add_argument("--hold_updates", type=int, default=0, help="constant-lr updates after warm-up")
    g.add_argument("--initial_lr_scale", type=float, default=0.0, help="warm-up start as a fraction of the peak")
    g.add_argument("--final_lr_scale", type=float, default=0.0, help="final lr as a fraction of the peak")
    g.add_argument("--lr_poly_power", type=float, default=1.0, help="poly exponent")
    g.add_argument("--lr_exp_decay", type=float, default=None, help="per-update decay factor of exp (None: derived)")

    g = parser.add_argument_group("health checks (ours)")
    g.add_argument("--on_nonfinite_loss", default="skip", choices=["skip", "stop"],
                   help="what to do with an update whose loss is NaN/inf")
    g.add_argument("--on_collapse", default="warn", choices=["warn", "stop"],
                   help="what to do when pretraining collapse or blank-only CTC output is detected")
    g.add_argument("--min_grad_norm", type=non_negative_float, default=0.0,
                   help="pretraining: a gradient norm below this for --health_patience log steps is a collapse "
                        "sign (0: off)")
    g.add_argument("--min_contrastive_loss", type=non_negative_float, default=0.01,
                   help="pretraining: a contrastive loss (bits per masked frame) at or below this is the loss floor "
                        "of a collapsed run (0: off)")
    g.add_argument("--health_patience", type=positive_int, default=3,
                   help="consecutive log steps a collapse / blank-only sign must persist before it is acted on")


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("inference")
    g.add_argument("--steps", type=int, default=0, help="measured batches (0: one pass over the data, WER mode)")
    g.add_argument("--warmup_steps", type=int, default=0, help="burn-in batches before measuring")
    g.add_argument("--labels_path", default=None, help="dictionary file (default: from the checkpoint or <data>/dict.<labels>.txt)")
    g.add_argument("--save_predictions", default=None, help="write utterance id, reference and hypothesis (TSV)")
    g.add_argument("--save_logits", default=None, help="write per-utterance log-probabilities (.pt)")
    g.add_argument("--torchscript", action="store_true", help="run the TorchScript-compiled model")
    g.add_argument("--w2v_path_for_args", default=None, help="checkpoint providing the architecture args")
