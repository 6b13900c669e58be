"""One pretraining step (forward, backward, AdamW step) of ours vs HF transformers' Wav2Vec2ForPreTraining.

Same configuration, same weights, same batch, same mask and negatives; the two models run alternately in one
process and the medians are compared. Also prints frames/s, masked frames/s, model FLOPs per step (counted from
the shapes by ``wav2vec2.flops``, forward + backward), achieved FLOP/s and its fraction of this machine's measured dense
matmul rate (MFU), and peak memory (CPU: max RSS growth is not measured per model; see --help).

    python -m benchmarks.train_step --preset base --no-hourglass --batch 4 --seconds 15.6 --steps 6
    python -m benchmarks.train_step --preset base --batch 4 --seconds 15.6 --steps 6      # ours with Hourglass
    python -m benchmarks.train_step --preset tiny --batch 8 --seconds 4 --steps 20
    python -m benchmarks.train_step --preset base --no-hourglass --bf16 ...               # BF16 autocast (ours)

HF has no Hourglass encoder: with Hourglass on, HF runs the plain 12-layer stack (the model the Hourglass replaces).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common.distributed import synchronize
from common.peak_flops import matmul_dtype, matmul_flops
from common.progress import Progress
from common.optim import OptimizerConfig, build_optimizer, clear_gradients
from wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2Model, preset
from wav2vec2.checkpoint import hf_config, hf_state_dict
from wav2vec2.criterion import ContrastiveCriterion, CtcCriterion
from wav2vec2.flops import ctc_flops, pretraining_flops
from wav2vec2.masking import compute_mask
from wav2vec2.negatives import sample_negative_indices

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0)
VOCAB = 32  # LibriSpeech letters


def _hf_negatives(neg, mask):
    b, t = mask.shape
    m = int(mask[0].sum())
    pos = torch.stack([mask[i].nonzero().squeeze(1) for i in range(b)])
    utt, slot = neg // m, neg % m
    frame = pos[utt, slot] + utt * t
    out = torch.zeros(b, t, neg.shape[-1], dtype=torch.long)
    for i in range(b):
        out[i, pos[i]] = frame[i]
    return out


def ours_frames(model, x: torch.Tensor) -> int:
    inner = getattr(model, "w2v_model", model)
    return int(inner.output_lengths(torch.tensor([x.shape[1]]))[0])


def _pretrain_setup(args, cfg, x, device):
    """Contrastive pretraining: same mask and negatives for both; tokens = masked frames (the reference's)."""
    ours = Wav2Vec2Model(cfg).train().to(device)
    t = ours_frames(ours, x)
    g_host = torch.Generator().manual_seed(0)
    mask = compute_mask((args.batch, t), cfg.mask_prob, cfg.mask_length, min_masks=2, generator=g_host)
    m = int(mask[0].sum())
    neg = sample_negative_indices(args.batch, m, cfg.num_negatives, generator=g_host)
    g = torch.Generator(device).manual_seed(0)  # the Gumbel noise is drawn on the model's device
    mask, neg = mask.to(device), neg.to(device)
    crit = ContrastiveCriterion(loss_weights=(0.1, 10.0))
    hf = step_hf = None
    if not args.skip_hf:
        import transformers

        plain = cfg.replace(hourglass_transformer=None)
        hc = hf_config(plain, transformers_only=True)
        hf = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**hc)).train()
        if cfg.hourglass is None:
            hf.load_state_dict(hf_state_dict(ours))
        hf = hf.to(device)
        hf_neg = _hf_negatives(neg.cpu(), mask.cpu()).to(device)

        def step_hf():
            return hf(x, mask_time_indices=mask, sampled_negative_indices=hf_neg).loss

    def step_ours():
        return crit(ours(x, mask_indices=mask, negative_indices=neg, generator=g))[0]

    return ours, step_ours, hf, step_hf, args.batch * m, "masked frames"


def _finetune_setup(args, cfg, x, device):
    """CTC fine-tuning with the recipe's frozen feature extractor (feature_grad_mult 0 / HF freeze_feature_encoder)
    and masking off in both (HF draws its SpecAugment masks with numpy, so they could not be the same); the same
    random letter targets, ``--letters`` per second of audio; tokens = target letters (the reference's ntokens)."""
    ft_cfg = cfg.replace(feature_grad_mult=0.0, apply_mask=False)
    ours = Wav2Vec2ForCTC(ft_cfg, VOCAB).train().to(device)
    n_letters = max(1, int(round(args.letters * args.seconds)))
    g_host = torch.Generator().manual_seed(0)
    # targets on the host, as the loader gives them to the criterion (HF gets a device copy)
    target = torch.randint(4, VOCAB, (args.batch, n_letters), generator=g_host)
    target_lengths = torch.full((args.batch,), n_letters, dtype=torch.long)
    crit = CtcCriterion()
    hf = step_hf = None
    if not args.skip_hf:
        import transformers

        plain = ft_cfg.replace(hourglass_transformer=None)
        hc = hf_config(plain, VOCAB, transformers_only=True)
        hc["apply_spec_augment"] = False
        hf = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**hc)).train()
        if cfg.hourglass is None:
            hf.load_state_dict(hf_state_dict(ours))
        hf.freeze_feature_encoder()
        hf = hf.to(device)
        hf_target = target.to(device)

        def step_hf():
            return hf(x, labels=hf_target).loss

    def step_ours():
        logits, out_lengths = ours(x, None)
        return crit(logits, out_lengths, target, target_lengths)[0]

    return ours, step_ours, hf, step_hf, args.batch * n_letters, "target letters"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pretrain", choices=["pretrain", "finetune"],
                   help="pretrain: Wav2Vec2ForPreTraining step; finetune: CTC step (Wav2Vec2ForCTC), frozen extractor")
    p.add_argument("--letters", type=float, default=15.0,
                   help="finetune: target letters per second of audio (synthetic transcripts; sets the CTC target "
                        "length and the letters/s figure)")
    p.add_argument("--preset", default="base", choices=["base", "large", "tiny"])
    p.add_argument("--no-hourglass", action="store_true", help="plain stack (fairseq Base)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=15.6, help="utterance length (all equal, as cropped pretraining batches)")
    p.add_argument("--steps", type=int, default=6, help="measured steps per model (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--progress_interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines on stderr")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--bf16", action="store_true", help="ours under BF16 autocast (HF stays FP32 unless --hf-bf16)")
    p.add_argument("--hf-bf16", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="ours with each transformer layer torch.compile'd (train.py --torch_compile); compiled in the "
                        "warm-up steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (CUDA: timings synchronised, TF32 matmuls "
                   "for FP32 as the reference's --tf32 recipe, peak memory reported)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = dict(NO_DROP)
    if args.no_hourglass:
        overrides["hourglass_transformer"] = None
    cfg = preset(args.preset, **overrides)
    x = (torch.randn(args.batch, int(args.seconds * 16000)) * 0.1).to(device)
    setup = _finetune_setup if args.task == "finetune" else _pretrain_setup
    ours, step_ours_fwd, hf, step_hf_fwd, tokens, token_name = setup(args, cfg, x, device)
    opt_ours = build_optimizer([p_ for p_ in ours.parameters() if p_.requires_grad], OptimizerConfig(lr=1e-5))
    # HF: torch AdamW with foreach=True, faster than the per-tensor loop the HF Trainer's default "adamw_torch" gets
    opt_hf = (torch.optim.AdamW([p_ for p_ in hf.parameters() if p_.requires_grad], lr=1e-5, foreach=True)
              if hf is not None else None)

    def step_ours():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = step_ours_fwd()
        loss.backward()
        opt_ours.step()
        clear_gradients(ours.parameters())  # (apex's FusedAdam.zero_grad() takes no set_to_none)

    def step_hf():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.hf_bf16):
            loss = step_hf_fwd()
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    if hf is not None and args.task == "finetune" and cfg.hourglass is None:
        with torch.no_grad():  # same weights, same batch: the CTC losses (sums over the batch) must agree
            lo, lh = float(step_ours_fwd()), float(step_hf_fwd())
        print(f"same-model check: CTC loss ours {lo:.4f}, HF {lh:.4f}")

    # model FLOPs of one step (forward + backward), counted from the shapes (wav2vec2.flops; torch's FLOP counter
    # overcounts the grouped positional convolution's backward and misses the CPU's fused attention)
    if args.task == "finetune":
        flops = ctc_flops(ours.cfg, args.batch, x.shape[1], VOCAB).total
    else:
        flops = pretraining_flops(ours.cfg, args.batch, x.shape[1], tokens).total
    if args.compile:
        from common.compile import compile_blocks
        from wav2vec2.encoder import TransformerLayer

        t0 = time.perf_counter()
        n = compile_blocks(ours, (TransformerLayer,))
        step_ours()
        print(f"compiled {n} transformer layers; first step (compiling) {time.perf_counter() - t0:.1f} s")

    # progress on stderr (steps of ours + HF; the results go to stdout), printed outside the timed region
    prog = Progress(total=2 + args.steps, desc="train_step: warm-up", unit="steps",
                    interval_s=args.progress_interval, enabled=not args.quiet)
    for _ in range(2):
        step_ours()
        if hf is not None:
            step_hf()
        prog.update(1)
    times_ours, times_hf = [], []
    peak = {}
    for _ in range(args.steps):
        for name, step, times in (("ours", step_ours, times_ours), ("HF", step_hf, times_hf)):
            if name == "HF" and hf is None:
                continue
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated(device))
        prog.update(1, desc="train_step: timed")
    prog.close()
    rate = matmul_flops(device, matmul_dtype(bf16=args.bf16), budget_s=1.0)
    med = statistics.median(times_ours)
    frames = args.batch * int(ours_frames(ours, x))
    print(f"task={args.task} preset={args.preset} hourglass={cfg.hourglass_transformer} batch={args.batch}x{args.seconds}s "
          f"frames/step={frames} {token_name}/step={tokens} threads={torch.get_num_threads()} "
          f"precision={'bf16' if args.bf16 else 'fp32'}{' compiled' if args.compile else ''} optimizer: ours {opt_ours.implementation_name}, "
          f"HF torch.AdamW(foreach) device={device}")
    print(f"ours: median {med * 1000:.0f} ms/step  {frames / med:,.0f} frames/s  {tokens / med:,.0f} {token_name}/s "
          f"(the reference's ntokens/s)  {args.batch * args.seconds / med:,.1f} s of audio/s")
    print(f"ours: {flops / 1e9:.1f} GFLOP/step (fwd+bwd)  {flops / med / 1e9:.1f} GFLOP/s  "
          f"MFU {flops / med / rate:.1%} of measured {'bf16' if args.bf16 else 'fp32'} matmul {rate / 1e9:.0f} GFLOP/s")
    if peak:
        print("peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in peak.items()))
    if hf is not None:
        mh = statistics.median(times_hf)
        print(f"HF:   median {mh * 1000:.0f} ms/step  {frames / mh:,.0f} frames/s  {tokens / mh:,.0f} {token_name}/s")
        pairs = sorted(h / o for o, h in zip(times_ours, times_hf))  # each step's ratio: drift hits both alike
        print(f"ratio (ours throughput / HF throughput): {mh / med:.2f}x of the medians; per alternating step: "
              f"median {statistics.median(pairs):.2f}x, range {pairs[0]:.2f}-{pairs[-1]:.2f}x over {len(pairs)} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
