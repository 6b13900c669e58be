"""Extract a run's final dllogger summary from its JSON log: ``python -m common.benchmark_summary NVLOG [--output F]``.

At the end of a run ``train.py`` and ``inference.py`` log their figures with an empty step (``DLLL {..., "step": [],
"data": {...}}``): training the ``train_avg_*`` benchmark averages and the last validation, inference the throughput,
latency percentiles and WER. The log is appended to across jobs, so the summary is the LAST group of consecutive
empty-step records; their ``data`` dicts are merged (later records win). The benchmark scripts write it to
``$OUTPUT_DIR/benchmark_summary.json`` (one JSON object of metric -> value) for the README's performance tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

from common.logging import read_dllogger_log

__all__ = ["final_summary", "summarize", "main"]


def _is_summary(record: Mapping[str, Any]) -> bool:
    step = record.get("step")
    return record.get("type") == "LOG" and isinstance(step, list) and len(step) == 0


def final_summary(records: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Merged ``data`` of the last run of consecutive empty-step LOG records ({} when there is none)."""
    group: List[Mapping[str, Any]] = []
    in_group = False
    for record in records:
        if record.get("type") != "LOG":
            continue  # METADATA records may be interleaved anywhere
        if _is_summary(record):
            if not in_group:
                group, in_group = [], True
            group.append(record)
        else:
            in_group = False
    out: Dict[str, Any] = {}
    for record in group:
        out.update(record.get("data") or {})
    return out


def _finite(value: Any) -> Any:
    """NaN/inf (which strict JSON cannot hold) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(log_path: str, output: Optional[str] = None) -> Dict[str, Any]:
    if not os.path.isfile(log_path):
        raise FileNotFoundError(f"{log_path}: no such dllogger log")
    summary = final_summary(read_dllogger_log(log_path))
    if not summary:
        raise ValueError(f"{log_path}: no final summary (a LOG record with step []) - did the run finish?")
    summary = {k: _finite(v) for k, v in summary.items()}
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        tmp = output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, output)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.benchmark_summary", description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="dllogger JSON log (e.g. <output_dir>/nvlog.json)")
    p.add_argument("--output", "-o", default=None, help="write the summary here as JSON (default: stdout only)")
    args = p.parse_args(argv)
    try:
        summary = summarize(args.log, args.output)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    if args.output:
        print(f"benchmark summary written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
