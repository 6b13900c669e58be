"""Turn a dllogger training log (``nvlog.json``) into PNG curves.

    python -m common.plotting results/pretrain_base/nvlog.json --out results/pretrain_base/plots

One figure per group (loss, accuracy, perplexity, temperature, lr, loss scale, grad norm, WER/UER, ntokens/s, MFU, data wait), each
with the scopes found (train, train_avg, val). The x axis is the global update number: per-interval records
``[epoch, iter, steps_per_epoch]`` map to ``(epoch - 1) * steps_per_epoch + iter`` and per-epoch records
``[epoch]`` to ``epoch * steps_per_epoch`` (epochs are 1-based as in the reference); without any per-interval record
the x axis is the epoch. Needs matplotlib (``pip install matplotlib``); parsing works without it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from common.logging import read_dllogger_log

__all__ = ["GROUPS", "collect_series", "plot_log", "main"]

# figure name -> metric suffixes (after the scope prefix)
GROUPS: Dict[str, Tuple[str, ...]] = {
    "loss": ("loss",),
    "accuracy": ("accuracy",),
    "perplexity": ("prob_perplexity", "code_perplexity"),
    "temperature": ("temp",),
    "lr": ("lr",),
    "loss_scale": ("loss_scale",),
    "grad_norm": ("grad_norm",),
    "wer": ("wer", "uer", "raw_wer"),
    "throughput": ("ntokens/s",),
    "mfu": ("mfu",),
    "data_wait": ("data_wait",),
}
_SCOPES = ("train_avg", "val_ema", "train", "val")  # longest prefixes first


def _split_key(key: str) -> Optional[Tuple[str, str]]:
    for scope in _SCOPES:
        if key.startswith(scope + "_"):
            return scope, key[len(scope) + 1:]
    return None


def collect_series(records: Sequence[Mapping[str, Any]]) -> Tuple[Dict[str, List[Tuple[float, float]]], str]:
    """``({"train_loss": [(x, y), ...], ...}, x_label)`` from parsed dllogger records (LOG records with a step list
    of length 1 or 3; PARAMETER and end-of-job ``[]`` records are skipped). x is the record's ``<scope>_update``
    (the global update, in our logs), else reconstructed from the (epoch, iteration) step (the reference's logs,
    exact only while every epoch runs whole). Points are sorted by x; where a log
    holds an x twice (the job-appended log of a run resumed from an earlier checkpoint repeats those updates), the
    later record wins."""
    logs = [r for r in records if r.get("type") == "LOG" and isinstance(r.get("step"), list) and r["step"]]
    spe = None
    for r in logs:
        if len(r["step"]) >= 3:
            spe = r["step"][2]
    points: Dict[str, Dict[float, float]] = {}
    by_update = False
    for r in logs:
        step, data = r["step"], r.get("data", {})
        update = next((v for k, v in data.items() if k.endswith("_update") and isinstance(v, (int, float))), None)
        if update is not None:  # our logs carry the global update number
            x, by_update = update, True
        elif len(step) >= 2:  # the reference's: reconstructed from (epoch, iteration, iterations per epoch)
            x = (step[0] - 1) * (step[2] if len(step) > 2 else (spe or 0)) + step[1]
        else:
            x = step[0] * spe if spe else step[0]
        for key, value in data.items():
            if key.endswith("_update"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                points.setdefault(key, {})[float(x)] = float(value)  # a resumed run's repeat replaces the first
    series = {key: sorted(xy.items()) for key, xy in points.items()}
    return series, ("update" if spe or by_update else "epoch")


def plot_log(log_path: str, out_dir: str) -> List[str]:
    """Write one PNG per metric group present in the log; returns the written paths."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib "
                           "(or install this project with the [plots] extra)") from exc
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    series, xlabel = collect_series(read_dllogger_log(log_path))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for group, suffixes in GROUPS.items():
        lines = []
        for key, pts in series.items():
            parts = _split_key(key)
            if parts and parts[1] in suffixes:
                lines.append((key, pts))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for key, pts in sorted(lines):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=key, marker="o" if len(pts) < 50 else None, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(group)
        if group in ("lr", "loss_scale"):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"{group}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.plotting", description=__doc__.splitlines()[0])
    parser.add_argument("log", help="dllogger JSON log (e.g. <output_dir>/nvlog.json)")
    parser.add_argument("--out", default=None, help="output directory (default: <log dir>/plots)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.log):
        print(f"error: no such log file: {args.log}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.log)), "plots")
    try:
        written = plot_log(args.log, out)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not written:
        print(f"no plottable metrics found in {args.log}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
