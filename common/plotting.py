"""Turn dllogger training logs (``nvlog.json``) into PNG curves and a tidy CSV.

    python -m common.plotting results/pretrain_base/nvlog.json --out results/pretrain_base/plots
    python -m common.plotting runs/lr5e-4 runs/lr1e-3 ref/nvlog.json --out cmp    # overlay runs, legend per run
    python -m common.plotting runs/lr5e-4/nvlog.json --csv curves.csv --no_plots  # for pandas, gnuplot, sheets

One figure per group (loss, accuracy, perplexity, temperature, lr, loss scale, grad norm, WER/UER, ntokens/s, MFU, data
wait), each with the scopes found (train: per log interval, train_avg: epoch mean, val, val_ema) and, with several
logs, one colour per run (named by its directory, or ``--label``). The x axis is the global update number: our records
carry ``<scope>_update``; the reference's per-interval records ``[epoch, iter, steps_per_epoch]`` map to
``(epoch - 1) * steps_per_epoch + iter`` and per-epoch records ``[epoch]`` to ``epoch * steps_per_epoch`` (epochs are
1-based as in the reference; exact only while every epoch runs whole); without either the x axis is the epoch.

A log is appended to by every job of a run. A job starts at a PARAMETER block that follows logged metrics, at the first
record after an end-of-job ``[]`` record, or where the update number goes back. A job resumed from an earlier
checkpoint repeats updates: **the later job's records win**. From the new job's first per-interval update on, every
point of earlier jobs at that update or later is dropped (that trajectory was abandoned), and a repeated update
keeps the later record. Jobs that start after the previous one ended (a run extended with a larger ``--max_update``)
drop nothing. Each such event is reported on stderr, as are skipped lines (non-dllogger, unreadable or truncated
JSON, e.g. the last line of a SIGKILLed job) and NaN/inf values (drawn as red crosses at the axis bottom, never as a
silently interpolated curve). Needs matplotlib for the figures (``pip install matplotlib``); parsing and the CSV
work without it.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from common.logging import iter_dllogger_log

__all__ = ["GROUPS", "LogReport", "Run", "read_log", "collect_series", "load_run", "run_labels", "write_csv",
           "plot_runs", "plot_log", "main"]

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
# y-axis labels with units (losses are logged in bits: per masked frame in pre-training, per utterance in fine-tuning)
YLABELS: Dict[str, str] = {
    "loss": "loss (bits)",
    "accuracy": "contrastive accuracy (fraction)",
    "perplexity": "codebook perplexity",
    "temperature": "Gumbel temperature",
    "lr": "learning rate",
    "loss_scale": "loss scale",
    "grad_norm": "gradient L2 norm (before clipping)",
    "wer": "error rate (%)",
    "throughput": "ntokens/s",
    "mfu": "MFU (fraction of matmul peak)",
    "data_wait": "data wait (fraction of update time)",
}
LOG_Y = ("lr", "loss_scale")  # log-scale y axes by default (when every value is > 0)
_SCOPES = ("train_avg", "val_ema", "train", "val")  # longest prefixes first
_SCOPE_STYLE = {  # scope -> (line style, marker, description)
    "train": ("-", None, "per log interval"),
    "train_avg": ("--", "o", "epoch mean"),
    "val": ("-", "s", "validation"),
    "val_ema": (":", "^", "EMA validation"),
}
_SUFFIX_MARKERS = ("o", "s", "^", "D")


def _split_key(key: str) -> Optional[Tuple[str, str]]:
    for scope in _SCOPES:
        if key.startswith(scope + "_"):
            return scope, key[len(scope) + 1:]
    return None


def _number(value: Any) -> Optional[float]:
    """A float for int/float values and the strings ``NaN``/``Infinity``/``inf`` (some writers quote them)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(value.strip().lower().replace("infinity", "inf"))
    return None


@dataclass
class LogReport:
    """What reading and collecting a log skipped or decided (printed by the CLI as ``note:`` lines)."""

    path: str = ""
    lines: int = 0
    records: int = 0
    foreign_lines: int = 0  # non-empty lines without the DLLL prefix
    unreadable_lines: List[int] = field(default_factory=list)  # 1-based numbers of DLLL lines that are not JSON
    malformed_records: int = 0  # JSON records of an unexpected shape
    stdout_lines: int = 0  # lines of the console format ("DLL <datetime> - ..."): the stdout log, not the JSON one
    job_starts: List[float] = field(default_factory=list)  # x of each job's first per-interval record
    dropped: List[Tuple[int, float, int, float, float]] = field(default_factory=list)  # (job, x0, n, min, max)
    replaced: int = 0  # points replaced by a later record at the same x
    nonfinite: Dict[str, List[float]] = field(default_factory=dict)  # key -> x of NaN/inf values (kept points)
    summary: Dict[str, float] = field(default_factory=dict)  # numeric values of end-of-job ``[]`` records
    parameters: List[Dict[str, Any]] = field(default_factory=list)  # PARAMETER values per job
    jobs: int = 0  # jobs found (PARAMETER blocks after metrics, end-of-job records, updates going back)

    def notes(self) -> List[str]:
        out = []
        if self.unreadable_lines:
            shown = ", ".join(str(n) for n in self.unreadable_lines[:5])
            more = ", ..." if len(self.unreadable_lines) > 5 else ""
            out.append(f"skipped {len(self.unreadable_lines)} unreadable DLLL line(s) (truncated or not JSON; "
                       f"line {shown}{more})")
        if self.foreign_lines:
            out.append(f"skipped {self.foreign_lines} line(s) without the 'DLLL ' prefix")
        if self.malformed_records:
            out.append(f"skipped {self.malformed_records} record(s) of an unexpected shape")
        for job, x0, n, lo, hi in self.dropped:
            out.append(f"job {job} restarts at x={x0:g}, before the end of earlier jobs: their {n} point(s) at "
                       f"x={lo:g}..{hi:g} dropped (the later job wins)")
        if self.replaced:
            out.append(f"{self.replaced} point(s) logged twice at the same x: the later record kept")
        if self.jobs > 1:
            starts = ", ".join(f"{x:g}" for x in self.job_starts)
            out.append(f"{self.jobs} jobs" + (f"; per-interval records start at x={starts}" if starts else ""))
        for job in range(1, len(self.parameters)):
            before, after = self.parameters[job - 1], self.parameters[job]
            changed = [k for k in after if k in before and before[k] != after[k]]
            if changed:
                shown = "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in changed[:6])
                out.append(f"job {job + 1} changed {len(changed)} parameter(s): {shown}"
                           + ("; ..." if len(changed) > 6 else ""))
        for key, xs in sorted(self.nonfinite.items()):
            shown = ", ".join(f"{x:g}" for x in xs[:5]) + (", ..." if len(xs) > 5 else "")
            out.append(f"{key}: {len(xs)} NaN/inf value(s) at x={shown} (red crosses on the plot)")
        return out


def read_log(path: str, report: Optional[LogReport] = None) -> Tuple[List[Dict[str, Any]], LogReport]:
    """Records of a dllogger JSON log (lines ``DLLL {json}``), counting what is skipped: lines without the prefix,
    DLLL lines that are not JSON (a truncated last line). ``NaN``/``Infinity`` values parse as floats."""
    report = report if report is not None else LogReport(path=path)
    records: List[Dict[str, Any]] = []
    for number, kind, record in iter_dllogger_log(path):
        report.lines = number
        if kind == "record":
            records.append(record)
        elif kind in ("foreign", "stdout"):
            report.foreign_lines += 1
            report.stdout_lines += kind == "stdout"
        elif kind == "unreadable":
            report.unreadable_lines.append(number)
        elif kind == "malformed":
            report.malformed_records += 1
    report.records = len(records)
    return records, report


@dataclass
class Run:
    """One log's curves: ``series[key] = [(x, y), ...]`` sorted by x, ``epochs[key][x]`` the record's epoch,
    ``jobs[key][x]`` the 1-based job that logged the point."""

    label: str
    path: str
    series: Dict[str, List[Tuple[float, float]]]
    xlabel: str
    epochs: Dict[str, Dict[float, Optional[int]]]
    jobs: Dict[str, Dict[float, int]]
    report: LogReport


def _collect(records: Sequence[Any], report: LogReport):
    """Points ``{key: {x: (value, epoch, job)}}`` and the x label; see the module docstring for the job rules."""
    spe = None
    for r in records:  # the first steps_per_epoch, for per-epoch records logged before any per-interval one
        if isinstance(r, dict) and r.get("type") == "LOG" and isinstance(r.get("step"), list) \
                and len(r["step"]) >= 3 and _number(r["step"][2]):
            spe = _number(r["step"][2])
            break
    any_spe = spe is not None
    points: Dict[str, Dict[float, Tuple[float, Optional[int], int]]] = {}
    by_update = False
    job, job_has_log, job_started, ended, last_x = 1, False, False, False, None
    params: Dict[str, Any] = {}
    report.parameters = [params]
    for r in records:
        if not isinstance(r, dict):
            report.malformed_records += 1
            continue
        if r.get("type") != "LOG":
            continue  # METADATA
        step, data = r.get("step"), r.get("data")
        if not isinstance(data, dict):
            report.malformed_records += 1
            continue
        if step == "PARAMETER":
            if job_has_log or ended:
                job, job_has_log, job_started, ended, last_x = job + 1, False, False, False, None
                params = {}
                report.parameters.append(params)
            params.update(data)
            continue
        if not isinstance(step, list):
            report.malformed_records += 1
            continue
        if not step:  # end of job: benchmark summary, last validation again; inference results
            for key, value in data.items():
                num = _number(value)
                if num is not None:
                    report.summary[key] = num
            ended = True
            continue
        nums = [_number(s) for s in step]
        if len(step) > 3 or any(n is None or not math.isfinite(n) for n in nums):
            report.malformed_records += 1
            continue
        update = None
        for key, value in data.items():
            if key.endswith("_update") and _number(value) is not None and math.isfinite(_number(value)):
                update = _number(value)
                break
        if len(nums) >= 3 and nums[2]:
            spe = nums[2]
        if update is not None:  # our logs carry the global update number
            x, by_update = update, True
        elif len(nums) >= 2:  # the reference's: reconstructed from (epoch, iteration, iterations per epoch)
            x = (nums[0] - 1) * (nums[2] if len(nums) > 2 else (spe or 0)) + nums[1]
        else:
            x = nums[0] * spe if spe else nums[0]
        if ended or (last_x is not None and x < last_x):  # a new job without a PARAMETER block
            job, job_has_log, job_started, ended = job + 1, False, False, False
            params = {}
            report.parameters.append(params)
        job_has_log, last_x = True, x
        if not job_started and len(nums) >= 2:  # the job's first per-interval record: its first new update
            job_started = True
            report.job_starts.append(x)
            if job > 1:  # a resumed job: earlier jobs' points from here on belong to an abandoned trajectory
                gone = [(k, px) for k, xy in points.items() for px, (_, _, j) in xy.items() if j < job and px >= x]
                if gone:
                    xs = [px for _, px in gone]
                    report.dropped.append((job, x, len(gone), min(xs), max(xs)))
                    for k, px in gone:
                        del points[k][px]
        epoch = int(nums[0])
        for key, value in data.items():
            if key.endswith("_update"):
                continue
            num = _number(value)
            if num is None:
                continue
            slot = points.setdefault(key, {})
            if float(x) in slot:
                report.replaced += 1
            slot[float(x)] = (num, epoch, job)  # a repeated x: the later record wins
    report.jobs = job if job_has_log or job > 1 else 0
    return points, ("update" if any_spe or by_update else "epoch")


def _finish(points, report: LogReport):
    series = {key: sorted((x, v) for x, (v, _, _) in xy.items()) for key, xy in points.items() if xy}
    report.nonfinite = {key: [x for x, v in pts if not math.isfinite(v)] for key, pts in series.items()
                        if any(not math.isfinite(v) for _, v in pts)}
    return series


def collect_series(records: Sequence[Mapping[str, Any]],
                   report: Optional[LogReport] = None) -> Tuple[Dict[str, List[Tuple[float, float]]], str]:
    """``({"train_loss": [(x, y), ...], ...}, x_label)`` from parsed dllogger records (LOG records with a step list
    of length 1 to 3; PARAMETER, METADATA and end-of-job ``[]`` records are not points). x is the record's
    ``<scope>_update`` (the global update, in our logs), else reconstructed from the (epoch, iteration) step (the
    reference's logs). Points are sorted by x, each x once. Resumed runs, whose job-appended log repeats updates:
    the later job's records win (from a new job's first per-interval update on, earlier jobs' points are dropped;
    a repeated x keeps the later record). NaN/inf values are kept (listed in ``report.nonfinite``)."""
    report = report if report is not None else LogReport()
    points, xlabel = _collect(records, report)
    return _finish(points, report), xlabel


def load_run(path: str, label: Optional[str] = None) -> Run:
    """Read and collect one log (a file, or a directory holding ``nvlog.json``)."""
    path = _resolve(path)
    records, report = read_log(path)
    points, xlabel = _collect(records, report)
    series = _finish(points, report)
    epochs = {k: {x: e for x, (_, e, _) in xy.items()} for k, xy in points.items()}
    jobs = {k: {x: j for x, (_, _, j) in xy.items()} for k, xy in points.items()}
    return Run(label or run_labels([path])[0], path, series, xlabel, epochs, jobs, report)


def _resolve(path: str) -> str:
    if os.path.isdir(path):
        for name in ("nvlog.json", "nvlog_infer.json"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
    return path


def run_labels(paths: Sequence[str]) -> List[str]:
    """Short distinct names for logs: the fewest trailing directory names that tell them apart, e.g. ``lr5e-4`` and
    ``lr1e-3`` for ``runs/lr5e-4/nvlog.json`` and ``runs/lr1e-3/nvlog.json`` (also when the file names differ:
    ``runs/a/nvlog.json`` and ``runs/b/nvlog.json.1`` are ``a`` and ``b``); with the file name only when the
    directories cannot tell them apart (``nvlog.json`` and ``nvlog.json.1`` of one run directory)."""
    absolute = [os.path.abspath(p) for p in paths]
    dirs = [[q for q in os.path.dirname(p).split(os.sep) if q] for p in absolute]
    for parts in (dirs, [d + [os.path.basename(p)] for d, p in zip(dirs, absolute)]):
        for k in range(1, max((len(p) for p in parts), default=1) + 1):
            labels = ["/".join(p[-k:]) or os.path.basename(a) for p, a in zip(parts, absolute)]
            if len(set(labels)) == len(labels):
                return labels
    return [f"{i + 1}:{p}" for i, p in enumerate(paths)]  # the same file given twice


def write_csv(runs: Sequence[Run], out) -> int:
    """Tidy CSV, one row per point: ``update,epoch,scope,metric,value,run,job`` (``update`` empty for logs whose x
    axis is the epoch; ``scope`` empty for keys without a known scope prefix; NaN/inf as ``nan``/``inf``), the
    points the curves show (resumed jobs' repeats resolved). ``out``: a path or a text stream. Returns the rows."""
    fh = open(out, "w", newline="", encoding="utf-8") if isinstance(out, str) else out
    rows = 0
    try:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["update", "epoch", "scope", "metric", "value", "run", "job"])
        for run in runs:
            for key in sorted(run.series):
                scope, metric = _split_key(key) or ("", key)
                for x, value in run.series[key]:
                    epoch = run.epochs.get(key, {}).get(x)
                    update = "" if run.xlabel == "epoch" else _fmt(x)
                    writer.writerow([update, "" if epoch is None else epoch, scope, metric, repr(value), run.label,
                                     run.jobs.get(key, {}).get(x, "")])
                    rows += 1
    finally:
        if isinstance(out, str):
            fh.close()
    return rows


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _smoothed(ys: Sequence[float], window: int) -> List[float]:
    """Trailing mean over ``window`` points, NaN/inf left out (NaN where a window holds no finite value)."""
    out = []
    for i in range(len(ys)):
        vals = [v for v in ys[max(0, i - window + 1):i + 1] if math.isfinite(v)]
        out.append(sum(vals) / len(vals) if vals else float("nan"))
    return out


def _log_axis(group: str, values: Iterable[float], logy: Iterable[str]) -> bool:
    """A log y axis for ``group`` when asked for and every finite value is > 0 (a log axis would silently drop a
    zero or negative value, e.g. an lr schedule ending at 0)."""
    finite = [v for v in values if math.isfinite(v)]
    return group in set(logy) and bool(finite) and min(finite) > 0


def plot_runs(runs: Sequence[Run], out_dir: str, smooth: int = 0, logy: Iterable[str] = LOG_Y) -> List[str]:
    """One PNG per metric group found in any run (a curve per run and key); returns the written paths."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib "
                           "(or install this project with the [plots] extra)") from exc
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    logy = tuple(logy)
    multi = len(runs) > 1
    xlabels = sorted({r.xlabel for r in runs})
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for group, suffixes in GROUPS.items():
        lines = []  # (run index, run, key, scope, suffix index, points)
        for ri, run in enumerate(runs):
            for key in sorted(run.series):
                parts = _split_key(key)
                if parts and parts[1] in suffixes and run.series[key]:
                    lines.append((ri, run, key, parts[0], suffixes.index(parts[1]), run.series[key]))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(9, 5))
        use_log = _log_axis(group, [y for *_, pts in lines for _, y in pts], logy)
        note = " (linear axis: values <= 0)" if group in logy and not use_log else ""
        for li, (ri, run, key, scope, si, pts) in enumerate(lines):
            color = f"C{ri % 10}" if multi else f"C{li % 10}"
            style, marker, desc = _SCOPE_STYLE.get(scope, ("-", None, scope))
            hollow = False
            if len(suffixes) > 1 and marker is not None or multi and len(suffixes) > 1:
                marker = _SUFFIX_MARKERS[si % len(_SUFFIX_MARKERS)]  # tells apart curves that coincide (wer, raw_wer)
                hollow = si > 0
            if marker is None and len(pts) < 50:
                marker = "."
            xs = [x for x, _ in pts]
            ys = [y if math.isfinite(y) else float("nan") for _, y in pts]
            label = (f"{run.label}: " if multi else "") + f"{key} ({desc})"
            if smooth > 1 and scope == "train" and len(pts) > smooth:
                ax.plot(xs, ys, linestyle=style, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(xs, _smoothed(ys, smooth), linestyle=style, color=color, linewidth=1.5,
                        label=f"{label}, mean of {smooth}")
            else:
                ax.plot(xs, ys, linestyle=style, marker=marker, markersize=7 if hollow else 4, color=color,
                        label=label, linewidth=1.5 if scope != "train" else 1.2,
                        markerfacecolor="none" if hollow else color)
            bad = [x for x, y in pts if not math.isfinite(y)]
            if bad:
                ax.scatter(bad, [0.03] * len(bad), marker="x", color="red", transform=ax.get_xaxis_transform(),
                           zorder=5, label=(f"{run.label}: " if multi else "") + f"{key}: NaN/inf")
        for ri, run in enumerate(runs):  # where resumed or extended jobs begin
            for x in run.report.job_starts[1:]:
                ax.axvline(x, color=f"C{ri % 10}" if multi else "0.5", linestyle=":", linewidth=0.8)
        if any(len(r.report.job_starts) > 1 for r in runs):
            ax.plot([], [], color="0.5", linestyle=":", linewidth=0.8, label="a job (re)starts")
        ax.set_xlabel(" / ".join(xlabels))
        ax.set_ylabel(YLABELS.get(group, group))
        if use_log:
            ax.set_yscale("log")
        names = " vs ".join(r.label for r in runs)
        ax.set_title(f"{group}: {names}{note}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{group}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_log(log_path: str, out_dir: str, smooth: int = 0) -> List[str]:
    """Write one PNG per metric group present in the log; returns the written paths."""
    return plot_runs([load_run(log_path)], out_dir, smooth=smooth)


def _explain_empty(run: Run) -> str:
    rep = run.report
    if rep.records == 0 and rep.stdout_lines:
        return (f"{run.path}: no 'DLLL ' records, {rep.stdout_lines} console-format lines: this is the stdout log; "
                f"plot the JSON log (<output_dir>/nvlog.json)")
    if rep.records == 0:
        return f"{run.path}: no dllogger records ({rep.lines} lines)"
    text = f"{run.path}: no training records (LOG records with an epoch/update step)"
    if rep.summary:
        shown = ", ".join(f"{k}={v:g}" for k, v in list(rep.summary.items())[:6])
        text += f"; end-of-job values (an inference log?): {shown}"
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.plotting", description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", metavar="LOG",
                        help="dllogger JSON log(s) (e.g. <output_dir>/nvlog.json) or run directories holding one; "
                             "several: curves overlaid, one colour per run")
    parser.add_argument("--out", default=None, help="output directory (default with one log: <log dir>/plots)")
    parser.add_argument("--label", action="append", default=None,
                        help="legend name of each log, in order (default: the shortest distinct directory names)")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="also write every point as a tidy CSV (update,epoch,scope,metric,value,run,job); "
                             "- = stdout")
    parser.add_argument("--no_plots", action="store_true", help="no PNGs (with --csv)")
    parser.add_argument("--smooth", type=int, default=0, metavar="N",
                        help="also draw the per-interval train curves as a trailing mean of N points (raw faded)")
    parser.add_argument("--logy", default=",".join(LOG_Y), metavar="GROUPS",
                        help=f"comma-separated groups with a log-scale y axis (default: {','.join(LOG_Y)}; "
                             f"'' = none); groups: {','.join(GROUPS)}")
    args = parser.parse_args(argv)
    paths = [_resolve(p) for p in args.logs]
    for path in paths:
        if os.path.isdir(path):
            print(f"error: {path} is a directory without nvlog.json or nvlog_infer.json: give the log file",
                  file=sys.stderr)
            return 2
        if not os.path.isfile(path):
            print(f"error: no such log file: {path}", file=sys.stderr)
            return 2
    if args.smooth < 0:
        print(f"error: --smooth {args.smooth}: give a number of points >= 0 (0 or 1: no smoothing)", file=sys.stderr)
        return 2
    if args.label is not None and len(args.label) != len(paths):
        print(f"error: {len(args.label)} --label for {len(paths)} logs", file=sys.stderr)
        return 2
    if len(paths) > 1 and args.out is None and not args.no_plots:
        print("error: several logs: give --out DIR for the figures", file=sys.stderr)
        return 2
    if args.no_plots and args.csv is None:
        print("error: --no_plots without --csv writes nothing", file=sys.stderr)
        return 2
    unknown = [g for g in args.logy.split(",") if g and g not in GROUPS]
    if unknown:
        print(f"error: unknown --logy group(s): {','.join(unknown)} (groups: {','.join(GROUPS)})", file=sys.stderr)
        return 2
    labels = args.label or run_labels(paths)
    runs = []
    for path, label in zip(paths, labels):
        try:
            run = load_run(path, label)
        except (OSError, UnicodeError) as exc:
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        for note in run.report.notes():
            print(f"note: {path}: {note}", file=sys.stderr)
        if run.series:
            runs.append(run)
        else:
            print(_explain_empty(run), file=sys.stderr)
    if not runs:
        print("no plottable metrics found in " + ", ".join(paths), file=sys.stderr)
        return 1
    if len({r.xlabel for r in runs}) > 1:
        print("note: the runs' x axes differ (update vs epoch): their curves are not aligned", file=sys.stderr)
    if args.csv is not None:
        if args.csv == "-":
            try:
                write_csv(runs, sys.stdout)
                sys.stdout.flush()
            except BrokenPipeError:  # the reader went away (``--csv - | head``): not an error of this run
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit must not fail
        else:
            os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
            write_csv(runs, args.csv)
            print(args.csv)
    if args.no_plots:
        return 0
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(paths[0])), "plots")
    try:
        written = plot_runs(runs, out, smooth=args.smooth, logy=[g for g in args.logy.split(",") if g])
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path, file=sys.stderr if args.csv == "-" else sys.stdout)  # stdout holds the CSV
    if not written:  # metrics, but none of a plotted group (e.g. only ntokens): say so, as for an empty log
        print("no plottable metrics found in " + ", ".join(paths) + f" (groups: {','.join(GROUPS)})", file=sys.stderr)
        return 0 if args.csv is not None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
