"""Print the demo's closing summary from the logs it wrote.

    python -m utils.demo_summary --results results/demo --data data/synthetic/LibriSpeech --started <epoch seconds>

Reads the dllogger logs (``nvlog.json`` of the training stages, ``nvlog_infer.json`` of the inference stages) and the
filelists; every figure printed comes from those files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Optional

__all__ = ["read_records", "last_value", "audio_hours", "summarise"]


def read_records(path: str) -> list[dict[str, Any]]:
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("DLLL "):
                try:
                    records.append(json.loads(line[5:]))
                except json.JSONDecodeError:
                    continue
    return records


def last_value(records: list[dict[str, Any]], pattern: str) -> Optional[float]:
    """The value of the last data key matching ``pattern`` (regex, full match) in the log."""
    rx = re.compile(pattern)
    for rec in reversed(records):
        for key, value in rec.get("data", {}).items():
            if rx.fullmatch(key) and isinstance(value, (int, float)):
                return float(value)
    return None


def audio_hours(tsv: str, sample_rate: int = 16000) -> float:
    total = 0
    with open(tsv) as f:
        next(f, None)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 2:
                total += int(parts[1])
    return total / sample_rate / 3600


def _last_update(records: list[dict[str, Any]]) -> Optional[int]:
    """The last training record's update: its ``train_update`` field, or, in logs written before that field
    existed (and the reference's), ``(epoch - 1) * iterations_per_epoch + iteration``."""
    best = None
    for rec in records:
        data = rec.get("data", {})
        if "train_loss" not in data:
            continue
        if isinstance(data.get("train_update"), (int, float)):
            best = int(data["train_update"])
            continue
        step = rec.get("step")
        if isinstance(step, list) and len(step) == 3:
            epoch, it, per_epoch = step
            best = (epoch - 1) * per_epoch + it
    return best


def summarise(results: str, data: str, started: Optional[float]) -> tuple[str, dict[str, Any]]:
    info: dict[str, Any] = {}
    lines = ["", "=" * 72, "wav2vec 2.0 demo summary", "=" * 72]
    for split, tsv in (("pretraining (unlabelled)", "train.tsv"),):
        path = os.path.join(data, tsv)
        if os.path.exists(path):
            info["pretrain_hours"] = audio_hours(path)
            lines.append(f"audio for {split}: {info['pretrain_hours'] * 60:.1f} min")
    ft_cmd = os.path.join(results, "finetune", ".cmd")
    if os.path.exists(ft_cmd):
        m = re.search(r"--train_subset (\S+)", open(ft_cmd).read())
        if m and os.path.exists(os.path.join(data, m.group(1) + ".tsv")):
            info["finetune_hours"] = audio_hours(os.path.join(data, m.group(1) + ".tsv"))
            lines.append(f"labelled audio for fine-tuning ({m.group(1)}): {info['finetune_hours'] * 60:.1f} min")
    for stage in ("pretrain", "finetune"):
        recs = read_records(os.path.join(results, stage, "nvlog.json"))
        if not recs:
            continue
        upd = _last_update(recs)
        rate = last_value(recs, r"train_avg_ntokens/s")
        tflops, mfu = last_value(recs, r"train_avg_tflop/s"), last_value(recs, r"train_avg_mfu")
        unit = "masked frames/s" if stage == "pretrain" else "letters/s"
        extra = ""
        if stage == "pretrain":
            acc = last_value(recs, r"val_accuracy")
            extra = f", final val accuracy {acc:.3f}" if acc is not None else ""
        else:
            wer = last_value(recs, r"val_wer")
            extra = f", final dev-clean WER {wer:.2f}%" if wer is not None else ""
        info[f"{stage}_updates"] = upd
        rate_s = f"{rate:,.0f} {unit}" if rate is not None else "n/a"
        if tflops is not None:
            info[f"{stage}_tflops"] = tflops
            rate_s += f" ({tflops * 1e3:,.1f} GFLOP/s" + (f", MFU {mfu:.1%})" if mfu is not None else ")")
        lines.append(f"{stage}: {upd} updates, throughput {rate_s}{extra}")
    decoders = {}
    for split in ("test-clean", "test-other"):
        recs = read_records(os.path.join(results, f"infer_{split}", "nvlog_infer.json"))
        wer = last_value(recs, r"(eval_)?wer")
        if wer is not None:
            info[f"{split}_wer"] = wer
        greedy = last_value(recs, r"eval_wer_greedy")
        if greedy is not None:  # beam search with a lexicon (+ LM) ran; eval_wer is its WER
            info[f"{split}_wer_greedy"] = greedy
            decoders[split] = "lexicon + LM beam search"
    if started:
        info["wall_time_s"] = time.time() - float(started)
        lines.append(f"wall time: {info['wall_time_s'] / 60:.1f} min")
    lines.append(f"results folder: {os.path.abspath(results)} (checkpoints, nvlog.json, TensorBoard, plots/)")
    for split in ("test-clean", "test-other"):
        wer = info.get(f"{split}_wer")
        if wer is None:
            lines.append(f"{split} WER: (not available)")
        elif split in decoders:
            lines.append(f"{split} WER: {wer:.2f}%  ({decoders[split]}; greedy decoding: "
                         f"{info[f'{split}_wer_greedy']:.2f}%)")
        else:
            lines.append(f"{split} WER: {wer:.2f}%  (greedy decoding)")
    lines.append("=" * 72)
    return "\n".join(lines), info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.demo_summary", description=__doc__)
    p.add_argument("--results", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--started", type=float, default=None, help="start time (epoch seconds) of the demo")
    args = p.parse_args(argv)
    text, info = summarise(args.results, args.data, args.started)
    print(text)
    with open(os.path.join(args.results, "summary.json"), "w") as f:
        json.dump(info, f, indent=2)
    return 0 if "test-clean_wer" in info else 1


if __name__ == "__main__":
    sys.exit(main())
