#!/usr/bin/env python
"""Inference latency of our CTC model vs HuggingFace transformers' Wav2Vec2ForCTC with the SAME weights.

Our model (random weights, dropout 0, eval mode) is exported with ``wav2vec2.checkpoint.hf_state_dict`` /
``hf_config`` (as tests/test_hf_parity.py does) and loaded strictly into ``transformers.Wav2Vec2ForCTC``. The input is
a batch of identical-length utterances (default 104000 samples = 6.5 s, the average test-other utterance of the
reference's latency table). The models are timed alternately in one process (ours, HF, [ours with the Hourglass
encoder]) so that machine-load drift hits all of them alike; the report gives medians, minima and ours/HF ratios.

``ours`` is our forward as inference.py calls it on a batch without padding (``model(waveforms, None)``: plain
fused GroupNorm); ``ours_masked`` is the padded-batch path (``model(waveforms, lengths)``: masked GroupNorm with
per-utterance statistics, what makes batched results equal to one-by-one results); HF is called without an attention
mask (what HF does for GroupNorm "base" models, whose batched output therefore depends on padding).

    python benchmarks/inference_latency.py --presets base tiny --batch_sizes 1 8 --repeats 10 --threads 2
    python benchmarks/inference_latency.py --presets base --batch_sizes 1 --bf16    # + ours and HF under BF16 autocast

With ``--cuda_graphs`` (CUDA only) one more entry, ``ours_graphs``, replays our forward from a CUDA graph
(common/cuda_graphs.py), and with ``--bf16`` also ``ours_graphs_bf16``. On CUDA every timed call is synchronised.

With ``--bf16`` two more entries run in the same alternation: ``ours_bf16`` and ``hf_bf16`` (each model under
``torch.autocast(dtype=bfloat16)``), so BF16 speed-ups are reported against both HF's FP32 default and HF in BF16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.distributed import synchronize  # noqa: E402
from common.progress import Progress  # noqa: E402
from wav2vec2 import Wav2Vec2ForCTC, preset  # noqa: E402
from wav2vec2.checkpoint import hf_config, hf_state_dict  # noqa: E402

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0, final_dropout=0.0)
VOCAB = 32  # LibriSpeech letters


def build_models(name: str, hourglass: bool, attn: str, seed: int = 0) -> Dict[str, torch.nn.Module]:
    import transformers

    torch.manual_seed(seed)
    plain_cfg = preset(name, hourglass_transformer=None, **NO_DROP)
    ours = Wav2Vec2ForCTC(plain_cfg, VOCAB).eval()
    d = hf_config(plain_cfg, VOCAB, transformers_only=True)
    hf = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**d, attn_implementation=attn)).eval()
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    models: Dict[str, torch.nn.Module] = {"ours": ours, "hf": hf, "ours_masked": ours}
    default_cfg = preset(name, **NO_DROP)
    if hourglass and default_cfg.hourglass_transformer:
        models["ours_hourglass"] = Wav2Vec2ForCTC(default_cfg, VOCAB).eval()
    return models


def forward_fn(tag: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    if tag.endswith("_bf16"):
        inner = forward_fn(tag[: -len("_bf16")], model, x)

        def bf16() -> torch.Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return inner()
        return bf16
    lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    if tag == "ours_graphs":
        return lambda: model(x, None)[0]  # model: a GraphedInference around ours
    if tag == "hf":
        return lambda: model(x).logits
    if tag == "ours_masked":
        return lambda: model(x, lengths)[0]
    return lambda: model(x, None)[0]


def check_same_outputs(models: Dict[str, torch.nn.Module], x: torch.Tensor) -> float:
    with torch.inference_mode():
        a = forward_fn("ours", models["ours"], x)()
        b = forward_fn("hf", models["hf"], x)()
    return float((a - b).abs().max())


def time_alternating(models: Dict[str, torch.nn.Module], x: torch.Tensor, repeats: int, warmup: int,
                     progress: Optional[Progress] = None) -> Dict[str, List[float]]:
    """``progress``: advanced by one per forward (outside the timed region), closed at the end."""
    fns = {tag: forward_fn(tag, m, x) for tag, m in models.items()}
    times: Dict[str, List[float]] = {tag: [] for tag in fns}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for tag, fn in fns.items():
                synchronize(x.device)
                t = time.perf_counter()
                fn()
                synchronize(x.device)
                dt = time.perf_counter() - t
                if i >= warmup:
                    times[tag].append(dt)
                if progress is not None:
                    progress.update(1)
    if progress is not None:
        progress.close()
    return times


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["base", "tiny"], choices=["base", "tiny", "large"])
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--samples", type=int, default=104000, help="samples per utterance (16 kHz)")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per model and batch size")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per model first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hf_attention", default="sdpa", choices=["sdpa", "eager"], help="HF attn_implementation")
    p.add_argument("--no_hourglass", action="store_true", help="skip our default-Hourglass model")
    p.add_argument("--bf16", action="store_true", help="also time ours and HF under BF16 autocast")
    p.add_argument("--cuda_graphs", action="store_true", help="also time ours replayed from CUDA graphs (CUDA only)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--progress_interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines (forwards timed) on stderr")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.cuda_graphs and device.type != "cuda":
        p.error("--cuda_graphs needs --device cuda")
    import transformers

    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {cpu}, "
          f"{os.cpu_count()} cores, threads {args.threads}, device {device}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rows = []
    for name in args.presets:
        models = {k: m.to(device) for k, m in build_models(name, not args.no_hourglass, args.hf_attention).items()}
        if args.bf16:
            models["ours_bf16"], models["hf_bf16"] = models["ours"], models["hf"]
        if args.cuda_graphs:
            from common.cuda_graphs import GraphedInference

            for p_ in models["ours"].parameters():
                p_.requires_grad_(False)
            models["ours_graphs"] = GraphedInference(models["ours"])  # captures on first call (a warm-up call)
            if args.bf16:
                models["ours_graphs_bf16"] = GraphedInference(models["ours"])
        gen = torch.Generator().manual_seed(1)
        diff = check_same_outputs(models, (0.1 * torch.randn(1, 16000, generator=gen)).to(device))
        print(f"[{name}] ours vs HF max |logit diff| on 1 s of noise: {diff:.2e}")
        for bsz in args.batch_sizes:
            x = (0.1 * torch.randn(bsz, args.samples, generator=gen)).to(device)
            prog = Progress(total=(args.warmup + args.repeats) * len(models), desc=f"[{name}] batch {bsz}",
                            unit="forwards", interval_s=args.progress_interval, enabled=not args.quiet)
            times = time_alternating(models, x, args.repeats, args.warmup, prog)
            med = {tag: statistics.median(v) for tag, v in times.items()}
            row = {"preset": name, "batch_size": bsz, "samples": args.samples, "repeats": args.repeats,
                   "threads": args.threads,
                   **{f"{tag}_median_ms": 1000 * m for tag, m in med.items()},
                   **{f"{tag}_min_ms": 1000 * min(v) for tag, v in times.items()},
                   "ours_over_hf": med["ours"] / med["hf"]}
            if "ours_hourglass" in med:
                row["hourglass_over_hf"] = med["ours_hourglass"] / med["hf"]
            rows.append(row)
            row["masked_over_hf"] = med["ours_masked"] / med["hf"]
            extra = f", ours masked-extractor path {1000 * med['ours_masked']:.1f} ms (x{row['masked_over_hf']:.2f})"
            extra += (f", ours+Hourglass {1000 * med['ours_hourglass']:.1f} ms "
                      f"(x{row['hourglass_over_hf']:.2f})") if "ours_hourglass" in med else ""
            if "ours_graphs" in med:
                row["ours_graphs_median_ms"] = 1000 * med["ours_graphs"]
                extra += f", ours CUDA graph {1000 * med['ours_graphs']:.2f} ms (x{med['hf'] / med['ours_graphs']:.2f} HF speed)"
                if "ours_graphs_bf16" in med:
                    extra += f", ours CUDA graph BF16 {1000 * med['ours_graphs_bf16']:.2f} ms"
            if args.bf16:
                row["ours_bf16_over_hf"] = med["ours_bf16"] / med["hf"]
                row["ours_bf16_over_hf_bf16"] = med["ours_bf16"] / med["hf_bf16"]
                extra += (f", BF16: ours {1000 * med['ours_bf16']:.1f} ms, HF {1000 * med['hf_bf16']:.1f} ms "
                          f"(ours BF16 speed = {med['hf'] / med['ours_bf16']:.2f}x HF FP32, "
                          f"{med['hf_bf16'] / med['ours_bf16']:.2f}x HF BF16)")
            print(f"[{name}] batch {bsz}: speed ours/HF {med['hf'] / med['ours']:.2f}x; ours {1000 * med['ours']:.1f} ms, HF {1000 * med['hf']:.1f} ms, "
                  f"ours/HF {row['ours_over_hf']:.3f}{extra}  (medians of {args.repeats}; "
                  f"RTF ours {med['ours'] / (bsz * args.samples / 16000):.4f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
