"""wav2vec 2.0 pretraining and CTC fine-tuning.

    python train.py pretrain --data DIR --output_dir OUT [--preset base|large|tiny] [flags]
    python train.py finetune --data DIR --output_dir OUT --w2v_path PRETRAINED.pt [flags]
    torchrun --nproc_per_node=8 train.py pretrain ...

Flags and defaults are the NVIDIA DLE recipe's (``-h`` lists them); ``scripts/*.sh`` set the recipe values.
This file only wires things together: flags -> config, data, model, criterion -> ``common.trainer.Trainer``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from functools import partial
from typing import Any

import numpy as np
import torch

from common.args import add_common_args
from common.checkpointing import Checkpointer, UnreadableCheckpointsError
from common.data import Dictionary, LoaderConfig, build_loader, open_split
from common.data.errors import DataError, error_message
from common.distributed import all_reduce_sum, init_distributed, shutdown, synchronize
from common.health import HealthConfig, HealthMonitor
from common.logging import TensorBoardLogger, build_logger, training_metadata
from common.lr_schedules import LRScheduleConfig, LRScheduler
from common.metrics import MetricsAggregator, MetricsSpec
from common.optim import OptimizerConfig, build_optimizer
from common.peak_flops import matmul_dtype, matmul_flops
from common.precision import PrecisionPolicy
from common.trainer import HealthStop, Trainer, TrainerConfig
from wav2vec2.args import (
    add_dropout_and_masking_args,
    add_finetuning_args,
    add_pretraining_args,
    config_from_args,
    preset_defaults,
)
from wav2vec2.checkpoint import (CheckpointError, load_checkpoint, model_checkpoint, read_checkpoint,
                                 reference_parameter_layout)
from wav2vec2.config import Wav2Vec2Config
from wav2vec2.criterion import ContrastiveCriterion, CtcCriterion
from wav2vec2.model import Wav2Vec2ForCTC, Wav2Vec2Model
from wav2vec2.tasks import FinetuneTask, PretrainTask


def build_parser(mode: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"train.py {mode}", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("mode", choices=["pretrain", "finetune"])
    add_common_args(p)
    p.add_argument("--torch_compile", action="store_true",
                   help="(ours) torch.compile each transformer layer (dynamic shapes: one graph for all lengths); "
                        "on CPU inductor needs a C++ compiler; the first updates compile")
    add_dropout_and_masking_args(p)
    if mode == "pretrain":
        add_pretraining_args(p)
    else:
        add_finetuning_args(p)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    mode = next((a for a in argv if a in ("pretrain", "finetune")), None)
    if mode is None:
        print("usage: train.py {pretrain,finetune} [flags]   (train.py pretrain -h for the flags)", file=sys.stderr)
        sys.exit(2)
    parser = build_parser(mode)
    if mode == "pretrain":
        pre, _ = parser.parse_known_args(argv)
        if pre.preset:
            defaults = {k: v for k, v in preset_defaults(pre.preset).items() if parser.get_default(k) is not None or k == "hourglass_transformer"}
            parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    args.lr = args.lr[0]
    args.update_freq = args.update_freq[0]
    if args.fp16 and args.bf16:
        parser.error("--fp16 and --bf16 are mutually exclusive")
    if mode == "finetune" and not args.w2v_path and not args.resume:
        parser.error("finetune needs --w2v_path (the pretrained checkpoint)")
    if args.lr_policy == "exp" and args.lr_exp_decay is None and args.final_lr_scale <= 0:
        parser.error(f"--lr_policy exp decays towards --final_lr_scale x lr, which must be > 0 (got "
                     f"{args.final_lr_scale}; the fine-tuning recipes use 0.05), or give --lr_exp_decay")
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(args, print_fn, resumed: dict | None = None):
    """Returns (model, config, dictionary or None). ``resumed``: the checkpoint being resumed, if any."""
    if args.mode == "pretrain":
        cfg = config_from_args(args)
        return Wav2Vec2Model(cfg), cfg, None
    labels_text = resumed.get("output_labels") if resumed is not None else None
    if labels_text is not None:
        dictionary = Dictionary.from_text(labels_text, source="checkpoint output_labels")
    else:
        dict_path = os.path.join(args.data, f"dict.{args.labels}.txt")
        if not os.path.isfile(dict_path):
            raise DataError(f"dictionary not found: {dict_path} (--data {args.data} --labels {args.labels}; "
                            "fine-tuning reads the letter dictionary dict.<labels>.txt beside the filelists)")
        dictionary = Dictionary.load(dict_path)
    if args.w2v_path:
        print_fn(f"Loading model from {args.w2v_path}")
        pretrained = load_checkpoint(args.w2v_path)
        cfg = config_from_args(args, base=pretrained.config)
        model = Wav2Vec2ForCTC(cfg, len(dictionary))
        model.load_pretrained(pretrained.model.state_dict())
    elif resumed is not None and isinstance(resumed.get("model_config") or resumed.get("args"), dict):
        # --resume alone: the architecture is the resumed checkpoint's (its weights are loaded by the trainer)
        saved = resumed.get("model_config") or resumed["args"]
        cfg = config_from_args(args, base=Wav2Vec2Config.from_dict(saved))
        model = Wav2Vec2ForCTC(cfg, len(dictionary))
    else:
        raise ValueError(f"finetune needs --w2v_path (the pretrained checkpoint): --resume found no checkpoint in "
                         f"--output_dir {args.output_dir} to continue")
    return model, cfg, dictionary


def build_loaders(args, cfg, dictionary, env):
    finetune = args.mode == "finetune"
    labels = args.labels if finetune else None
    train = open_split(args.data, args.train_subset, labels=labels, dictionary=dictionary,
                       min_sample_size=args.min_sample_size, sample_rate=args.sample_rate, normalize=cfg.normalize)
    pad = finetune or args.enable_padding
    train_loader = build_loader(train, LoaderConfig(
        max_tokens=args.max_tokens, max_sentences=args.batch_size,
        required_batch_size_multiple=args.required_batch_size_multiple, max_sample_size=args.max_sample_size,
        pad=pad, num_batch_buckets=args.num_batch_buckets, num_concat_batches=args.num_concat_batches,
        seed=args.seed, shuffle=True, filter_long=True, num_workers=args.num_workers, conv_layers=cfg.conv_layers,
        min_frames=1 if finetune else 2,  # pretraining: negatives come from an utterance's other masked frames
    ), world_size=env.world_size, rank=env.rank)
    valid_loader = None
    # validation groups --num_concat_batches batches per iteration as training does (and the reference: its val_*
    # figures are per group), keeping the trailing smaller group (Q6)
    if args.valid_subset:
        valid = open_split(args.data, args.valid_subset, labels=labels, dictionary=dictionary, min_sample_size=None,
                           sample_rate=args.sample_rate, normalize=cfg.normalize)
        valid_loader = build_loader(valid, LoaderConfig(
            max_tokens=args.max_tokens_valid, max_sentences=args.batch_size_valid,
            required_batch_size_multiple=args.required_batch_size_multiple, max_sample_size=None, pad=pad,
            num_batch_buckets=0, num_concat_batches=args.num_concat_batches, seed=args.seed, shuffle=False,
            filter_long=args.skip_invalid_size_inputs_valid_test, num_workers=min(args.num_workers, 2),
            conv_layers=cfg.conv_layers, min_frames=1 if finetune else 2,
        ), world_size=env.world_size, rank=env.rank)
    return train_loader, valid_loader


#: flags that steer one job, not the training itself: not reported when they change between a run and its resume
JOB_FLAGS = frozenset({
    "resume", "ckpt", "output_dir", "log_file", "epochs_this_job", "updates_this_job", "num_workers", "log_frequency",
    "local_rank", "cpu", "device", "no_save", "save_interval_updates", "save_frequency", "keep_milestones",
    "allow_data_plan_change", "benchmark_epochs_num", "max_update",  # max_update: the trainer says what it changes
})


def changed_flags(saved_args: Any, args: argparse.Namespace) -> list[str]:
    """``--flag old -> new`` for every training flag whose value differs from the one the checkpoint was saved with
    (its ``args``: a dict, or a Namespace in NVIDIA's checkpoints); flags the checkpoint does not know are left out."""
    saved = vars(saved_args) if isinstance(saved_args, argparse.Namespace) else saved_args
    if not isinstance(saved, dict):
        return []
    out = []
    for name, value in vars(args).items():
        if name in JOB_FLAGS or name not in saved:
            continue
        old = saved[name]
        if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
            same = list(old) == list(value)
        else:
            same = old == value
        if not same:
            out.append(f"--{name} {old} -> {value}")
    return out


def health_config(args: argparse.Namespace, latent_groups: int) -> HealthConfig:
    """The run's health checks. A non-finite training loss is handled by the trainer (``--on_nonfinite_loss``:
    ``skip`` drops the update and keeps its NaN out of the logs, ``stop`` raises), so the monitor only warns about
    one (e.g. in validation) unless the run is to stop."""
    return HealthConfig(latent_groups=latent_groups, on_collapse=args.on_collapse, on_blank_only=args.on_collapse,
                        on_non_finite="stop" if args.on_nonfinite_loss == "stop" else "warn",
                        min_grad_norm=args.min_grad_norm, min_contrastive_loss=args.min_contrastive_loss,
                        patience=args.health_patience)


def peak_flops(args: argparse.Namespace, env, print_fn) -> float | None:
    """All ranks' FLOP/s that the logged ``mfu`` divides by: ``--peak_tflops`` per device, or this device's dense
    matmul rate in the run's precision, measured now (a fraction of a second)."""
    if args.peak_tflops is not None:
        per_device = args.peak_tflops * 1e12
        source = "--peak_tflops"
    else:
        dtype = matmul_dtype(bf16=args.bf16, fp16=args.fp16)
        per_device = matmul_flops(env.device, dtype)
        source = f"measured dense {str(dtype).removeprefix('torch.')} matmul rate"
    if per_device <= 0:
        return None
    print_fn(f"MFU denominator: {per_device / 1e12:.3g} TFLOP/s per device ({source})")
    return per_device * env.world_size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (DataError, OSError, UnreadableCheckpointsError, FloatingPointError) as exc:
        # a file read or written during the run (an audio file, the output directory, every checkpoint unreadable):
        # one line naming it; the trainer has saved what it could. Also a run stopped for non-finite losses
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
    finally:
        # a run that failed before training (a data or flag error found after the process group was initialised)
        # ends its group too, without a barrier: one left to interpreter exit keeps gloo's threads running into
        # finalisation, where the process can abort (SIGABRT, status 134 instead of 2). A no-op when run() ended it
        shutdown()


def run(args: argparse.Namespace) -> int:
    """The run of parsed ``args``; returns the exit status."""
    try:
        env = init_distributed(cpu=args.cpu, device=args.device)
    except ValueError as exc:  # a GPU that is not there, or one GPU for several ranks
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_fn = print if env.is_main else (lambda *a, **k: None)
    if env.distributed:
        print_fn(f"World size: {env.world_size}")
    if env.device.type == "cpu" and env.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.world_size))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    seed_everything(args.seed)
    try:
        precision = PrecisionPolicy.from_flags(fp16=args.fp16, bf16=args.bf16, tf32=args.tf32,
                                               cpu=env.device.type == "cpu")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    precision.apply_tf32()

    # the checkpoint to resume from is read once: it also supplies the fine-tuning dictionary
    resumed = Checkpointer(args.output_dir, log=print_fn).load_latest(read_checkpoint) if args.resume else None
    try:
        model, cfg, dictionary = build_model(args, print_fn, resumed[1] if resumed is not None else None)
        train_loader, valid_loader = build_loaders(args, cfg, dictionary, env)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if train_loader.summary is not None:
        print_fn(train_loader.summary.describe())
    if len(train_loader) < args.update_freq:
        print(f"error: {args.train_subset} yields {len(train_loader)} batches per rank per epoch, fewer than "
              f"--update_freq {args.update_freq}; lower --max_tokens or --update_freq", file=sys.stderr)
        return 2
    model.to(env.device)
    print_fn(f"Model size: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params")
    if args.torch_compile:
        from common.compile import CompileUnavailable, compile_blocks
        from wav2vec2.encoder import TransformerLayer

        try:
            n_compiled = compile_blocks(model, (TransformerLayer,))
        except CompileUnavailable as exc:  # no C++ compiler (CPU) / Triton (CUDA): one line, not inductor's traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print_fn(f"torch.compile: {n_compiled} transformer layers (compiled at first use; each new mode - training, "
                 "validation, frozen encoder, unpadded batches - compiles once, reported on stderr)")
    if hasattr(model, "layerdrop_seed"):
        model.layerdrop_seed = args.seed
    elif hasattr(model, "w2v_model"):
        model.w2v_model.layerdrop_seed = args.seed

    if args.mode == "pretrain":
        task = PretrainTask(ContrastiveCriterion(loss_weights=args.loss_weights, log_keys=args.log_keys))
        spec_train, spec_val = MetricsSpec.pretrain(), MetricsSpec.pretrain()
    else:
        task = FinetuneTask(CtcCriterion(blank_index=dictionary.bos, pad_index=dictionary.pad,
                                         eos_index=dictionary.eos), symbols=dictionary.symbols,
                            frame_lengths=model.w2v_model.output_lengths)
        spec_train, spec_val = MetricsSpec.finetune(), MetricsSpec.finetune()

    optimizer = build_optimizer(model.parameters(), OptimizerConfig(
        lr=args.lr, adam_betas=tuple(args.adam_betas), adam_eps=args.adam_eps, weight_decay=args.weight_decay,
        clip_norm=args.clip_norm))
    try:
        scheduler = LRScheduler(optimizer, LRScheduleConfig(
            lr_policy=args.lr_policy, lr=args.lr, max_update=args.max_update, warmup_updates=args.warmup_updates,
            hold_updates=args.hold_updates, initial_lr_scale=args.initial_lr_scale,
            final_lr_scale=args.final_lr_scale, lr_poly_power=args.lr_poly_power, lr_exp_decay=args.lr_exp_decay))
    except ValueError as exc:  # e.g. warm-up and hold longer than --max_update
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scaler = precision.make_loss_scaler(env.world_size, args.update_freq, init_scale=args.fp16_init_scale,
                                        min_loss_scale=args.min_loss_scale)

    def reduce_fn(values):
        return all_reduce_sum(values, env.device)

    # the epoch and validation timers wait for the device's queued work (sync=True scopes), as the reference's do
    sync = partial(synchronize, env.device) if env.device.type != "cpu" else None
    peak = peak_flops(args, env, print_fn)
    metrics = MetricsAggregator(spec_train, benchmark_epochs_num=args.benchmark_epochs_num, all_reduce_fn=reduce_fn,
                                synchronize=sync, peak_flops=peak)
    valid_metrics = MetricsAggregator(spec_val, all_reduce_fn=reduce_fn, synchronize=sync, peak_flops=peak)
    logger = build_logger(args.output_dir, args.log_file, rank=env.rank, metadata=training_metadata())
    logger.log_parameters({k: v for k, v in vars(args).items()})
    tensorboard = TensorBoardLogger(args.output_dir, rank=env.rank)
    tensorboard.log_hparams(vars(args))  # once, like the reference (str/bool/int/float values)
    health = HealthMonitor(args.mode, health_config(args, cfg.latent_groups))

    labels_text = dictionary.to_text() if dictionary is not None else None

    def checkpoint_extra() -> dict:
        meta = model_checkpoint(model, labels=labels_text, args={k: v for k, v in vars(args).items()})
        meta.pop("model")
        meta.pop("ema_model")
        return meta

    trainer = Trainer(
        TrainerConfig(
            output_dir=args.output_dir, max_update=args.max_update, update_freq=args.update_freq,
            clip_norm=args.clip_norm, log_frequency=args.log_frequency, save_frequency=args.save_frequency,
            save_interval_updates=args.save_interval_updates, keep_milestones=tuple(args.keep_milestones),
            no_save=args.no_save, seed=args.seed, epochs_this_job=args.epochs_this_job,
            updates_this_job=args.updates_this_job,
            benchmark_epochs_num=args.benchmark_epochs_num, ema=args.ema, on_nonfinite_loss=args.on_nonfinite_loss,
            allow_data_plan_change=args.allow_data_plan_change,
            best_metric="wer" if args.mode == "finetune" else "loss",
        ),
        model=model, task=task, optimizer=optimizer, scheduler=scheduler, precision=precision, scaler=scaler,
        train_loader=train_loader, valid_loader=valid_loader, metrics=metrics, valid_metrics=valid_metrics,
        logger=logger, env=env, tensorboard=tensorboard, checkpoint_extra=checkpoint_extra, health=health,
        print_fn=print_fn, reference_layout=reference_parameter_layout,
    )
    finished = False  # the run ended normally on this rank (then the ranks meet before the process group ends)
    try:
        try:
            if resumed is not None:
                print_fn(f"Resuming from {resumed[0]}")
                changed = changed_flags(resumed[1].get("args"), args)
                if changed:
                    print_fn(f"Note: flags changed since {resumed[0]} (the run continues with the new values): "
                             + ", ".join(changed))
                trainer.load_state_dict(resumed[1], source=resumed[0])
            elif args.ckpt:
                print_fn(f"Loading checkpoint {args.ckpt}")
                trainer.load_state_dict(read_checkpoint(args.ckpt), source=args.ckpt)
        except (CheckpointError, RuntimeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            trainer.fit()
        except HealthStop as stop:  # decided alike on every rank: they meet at the barrier (rank 0 saved first)
            finished = True
            if env.is_main:
                print(f"error: {stop}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # a second Ctrl-C: the first one's save was given up
            print("Interrupted: stopped without saving the current update (resume continues from the last "
                  "checkpoint)", file=sys.stderr)
            return 130
        finished = True
    finally:
        logger.close() if hasattr(logger, "close") else None
        tensorboard.close()
        shutdown(finished=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
