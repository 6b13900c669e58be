"""Curves from dllogger logs (common/plotting.py): resumed, extended and reused logs, several runs overlaid, the tidy
CSV export, damaged logs. Oracles are small hand-written logs; no assertion looks at pixels."""

import csv
import io
import json
import math
import os

import pytest

from common.plotting import collect_series, main as plot_main


def _line(step, data, type_="LOG"):
    return "DLLL " + json.dumps({"timestamp": "0", "datetime": "x", "elapsedtime": "0", "type": type_, "step": step,
                                 "data": data})


def _params(**kw):
    return [_line("PARAMETER", {k: v}) for k, v in kw.items()]


def _train(update, loss, spe=100, **extra):
    epoch, it = divmod(update - 1, spe)
    return _line([epoch + 1, it + 1, spe], {"train_loss": loss, "train_lr": 1e-4, **extra, "train_update": update})


def _val(update, loss, epoch=1):
    return _line([epoch], {"val_loss": loss, "val_update": update})


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return str(path)


def _records(lines):
    return [json.loads(line[5:]) for line in lines]


def test_resumed_job_with_another_log_interval_does_not_zigzag():
    """Job 1 logs every update up to 120 and is killed; its last checkpoint was update 100. Job 2 (logging every 4
    updates) repeats 104..120. From 104 on only job 2's points remain: no alternation between the abandoned and
    the resumed trajectory."""
    job1 = _params(lr=5e-4) + [_train(u, 10.0) for u in range(91, 121)]
    job2 = _params(lr=5e-4) + [_train(u, 2.0) for u in range(104, 129, 4)]
    series, xlabel = collect_series(_records(job1 + job2))
    xs = [x for x, _ in series["train_loss"]]
    assert xlabel == "update" and xs == sorted(set(xs))
    assert [x for x, y in series["train_loss"] if y == 10.0] == list(map(float, range(91, 104)))
    assert [x for x, y in series["train_loss"] if y == 2.0] == list(map(float, range(104, 129, 4)))


def test_resumed_job_repeating_the_same_updates_keeps_the_later_records():
    """Same log interval: updates 101-120 logged twice; each appears once, with job 2's value. Job 2 validates
    the checkpoint of update 100 again: its record replaces job 1's at the same update."""
    job1 = (_params(lr=5e-4) + [_train(u, 10.0) for u in range(95, 101)] + [_val(100, 7.0)]
            + [_train(u, 10.0) for u in range(101, 121)])
    job2 = _params(lr=5e-4) + [_val(100, 6.9)] + [_train(u, 2.0) for u in range(101, 131)]
    series, _ = collect_series(_records(job1 + job2))
    assert series["train_loss"] == [(float(u), 10.0) for u in range(95, 101)] + [(float(u), 2.0)
                                                                                for u in range(101, 131)]
    assert series["val_loss"] == [(100.0, 6.9)]


def test_fresh_run_reusing_a_log_replaces_the_earlier_run(tmp_path):
    """A second run started from update 1 in the same output directory: only its curve is drawn (an interleaving
    of two runs would be a wrong curve), and the CLI says how many points of the earlier run were dropped."""
    lines = (_params(lr=5e-4) + [_train(u, 9.0) for u in range(10, 101, 10)] + [_val(100, 8.0)]
             + _params(lr=1e-3) + [_train(u, 3.0) for u in range(5, 51, 5)] + [_val(50, 2.5)])
    series, _ = collect_series(_records(lines))
    assert series["train_loss"] == [(float(u), 3.0) for u in range(5, 51, 5)]
    assert series["val_loss"] == [(50.0, 2.5)]
    path = _write(tmp_path / "run" / "nvlog.json", lines)
    from common.plotting import load_run
    report = load_run(path).report
    assert report.jobs == 2 and report.job_starts == [10.0, 5.0]
    assert report.dropped == [(2, 5.0, 21, 10.0, 100.0)]  # train_loss, train_lr, val_loss
    assert any("lr: 0.0005 -> 0.001" in n for n in report.notes())


def test_extended_run_keeps_every_point_and_names_the_changed_parameter(tmp_path):
    """A finished run (end-of-job ``[]`` records) continued with a larger --max_update: nothing is dropped."""
    lines = (_params(max_update=100) + [_train(u, 5.0) for u in range(25, 101, 25)] + [_val(100, 4.0)]
             + [_line([], {"train_avg_loss": 4.9, "benchmark_epochs_num": 3}), _line([], {"val_loss": 4.0})]
             + _params(max_update=200) + [_val(100, 4.0)] + [_train(u, 3.0) for u in range(125, 201, 25)])
    path = _write(tmp_path / "run" / "nvlog.json", lines)
    from common.plotting import load_run
    run = load_run(path)
    assert [x for x, _ in run.series["train_loss"]] == [25.0, 50.0, 75.0, 100.0, 125.0, 150.0, 175.0, 200.0]
    assert run.series["val_loss"] == [(100.0, 4.0)]
    assert run.report.dropped == [] and run.report.jobs == 2 and run.report.job_starts == [25.0, 125.0]
    assert "train_avg_loss" not in run.series  # end-of-job summaries are not points
    assert any("max_update: 100 -> 200" in n for n in run.report.notes())


def test_a_job_without_parameter_block_is_found_where_updates_go_back():
    lines = [_train(u, 9.0) for u in (10, 20, 30)] + [_train(u, 1.0) for u in (15, 25)]
    series, _ = collect_series(_records(lines))
    assert series["train_loss"] == [(10.0, 9.0), (15.0, 1.0), (25.0, 1.0)]


def test_reference_log_without_update_keys_uses_each_jobs_steps_per_epoch():
    """The reference's records carry (epoch, iter, steps_per_epoch) and no ``_update``; epoch records land at the
    end of their epoch."""
    lines = ([_line([1, it, 10], {"train_loss": 5.0}) for it in (5, 10)] + [_line([1], {"val_loss": 4.5})]
             + [_line([2, it, 10], {"train_loss": 4.0}) for it in (5, 10)] + [_line([2], {"val_loss": 3.5})])
    series, xlabel = collect_series(_records(lines))
    assert xlabel == "update"
    assert [x for x, _ in series["train_loss"]] == [5.0, 10.0, 15.0, 20.0]
    assert series["val_loss"] == [(10.0, 4.5), (20.0, 3.5)]
    epochs_only = [_line([e], {"val_loss": 5.0 - e}) for e in (1, 2, 3)]  # no per-interval record: x is the epoch
    series, xlabel = collect_series(_records(epochs_only))
    assert xlabel == "epoch" and series["val_loss"] == [(1.0, 4.0), (2.0, 3.0), (3.0, 2.0)]


def test_damaged_logs_are_read_with_skipped_lines_counted(tmp_path):
    """A SIGKILLed job's half-written last line, a traceback pasted in, a DLLL line that is not JSON, records of
    unexpected shapes: skipped and counted, the good records still plotted, no exception."""
    good = _params(lr=1e-4) + [_train(u, 3.0) for u in (1, 2, 3)]
    bad = ["Traceback (most recent call last):", "DLLL not json",
           "DLLL " + json.dumps([1, 2]),
           "DLLL " + json.dumps({"type": "LOG", "step": [1, 4, 100], "data": None}),
           "DLLL " + json.dumps({"type": "LOG", "step": [1, "x", 100], "data": {"train_loss": 1.0}}),
           "DLLL " + json.dumps({"type": "LOG", "step": {"epoch": 1}, "data": {"train_loss": 1.0}})]
    path = tmp_path / "nvlog.json"
    path.write_text("\n".join(good + bad) + "\n" + _train(4, 3.0)[:40])
    from common.plotting import load_run
    run = load_run(str(path))
    assert run.series["train_loss"] == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]
    rep = run.report
    assert rep.foreign_lines == 1 and rep.unreadable_lines == [len(good) + 2, len(good) + len(bad) + 1]
    assert rep.malformed_records == 4
    notes = " ".join(rep.notes())
    assert "2 unreadable" in notes and "1 line(s) without" in notes and "4 record(s)" in notes
    # the same records through collect_series (the old API) raise nothing either
    records = [json.loads(b[5:]) for b in bad[2:]]
    series, _ = collect_series([r for r in records if isinstance(r, dict)] + _records(good[1:]))
    assert len(series["train_loss"]) == 3


def test_nan_and_inf_values_are_kept_reported_and_exported(tmp_path):
    lines = [_train(1, 3.0), _train(2, float("nan"), train_grad_norm=float("inf")), _train(3, "NaN"),
             _train(4, 2.0)]
    assert "NaN" in lines[1] and "Infinity" in lines[1]  # what Python's json (and dllogger) writes
    path = _write(tmp_path / "r" / "nvlog.json", lines)
    from common.plotting import load_run
    run = load_run(path)
    ys = [y for _, y in run.series["train_loss"]]
    assert [x for x, _ in run.series["train_loss"]] == [1.0, 2.0, 3.0, 4.0]  # a NaN is a point, not a gap
    assert ys[0] == 3.0 and math.isnan(ys[1]) and math.isnan(ys[2]) and ys[3] == 2.0
    assert run.report.nonfinite == {"train_loss": [2.0, 3.0], "train_grad_norm": [2.0]}
    out = tmp_path / "c.csv"
    assert plot_main([path, "--csv", str(out), "--no_plots"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["value"] for r in rows if r["metric"] == "grad_norm"] == ["inf"]
    assert [r["value"] for r in rows if r["metric"] == "loss"] == ["3.0", "nan", "nan", "2.0"]
    assert all(math.isnan(float(r["value"])) for r in rows if r["metric"] == "loss" and r["update"] in "23")


def test_csv_is_tidy_and_holds_the_points_the_curves_show(tmp_path):
    lines = (_params(lr=5e-4) + [_train(u, 9.0) for u in (50, 100)]
             + [_line([1], {"train_avg_loss": 8.0, "train_avg_update": 100}), _val(100, 7.5), _train(150, 9.0)]
             + _params(lr=5e-4) + [_train(u, 6.0) for u in (150, 200)])
    path = _write(tmp_path / "base" / "nvlog.json", lines)
    out = tmp_path / "csv" / "all.csv"
    assert plot_main([path, "--csv", str(out), "--no_plots"]) == 0
    text = out.read_text()
    assert text.splitlines()[0] == "update,epoch,scope,metric,value,run,job"
    got = {(r["update"], r["epoch"], r["scope"], r["metric"], r["value"], r["run"], r["job"])
           for r in csv.DictReader(io.StringIO(text)) if r["metric"] == "loss"}
    assert got == {("50", "1", "train", "loss", "9.0", "base", "1"),
                   ("100", "1", "train", "loss", "9.0", "base", "1"),
                   ("150", "2", "train", "loss", "6.0", "base", "2"),  # job 1's update 150 dropped
                   ("200", "2", "train", "loss", "6.0", "base", "2"),
                   ("100", "1", "train_avg", "loss", "8.0", "base", "1"),
                   ("100", "1", "val", "loss", "7.5", "base", "1")}
    assert {r["metric"] for r in csv.DictReader(io.StringIO(text))} == {"loss", "lr"}  # no "update" metric


def test_several_runs_are_overlaid_and_exported_under_their_directory_names(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = _write(tmp_path / "lr5e-4" / "nvlog.json", [_train(u, 5.0) for u in (10, 20)] + [_val(20, 4.0)])
    b = _write(tmp_path / "lr1e-3" / "nvlog.json", [_train(u, 4.0) for u in (10, 20)] + [_val(20, 3.0)])
    out, table = tmp_path / "cmp", tmp_path / "cmp.csv"
    # a run directory is accepted for its nvlog.json
    assert plot_main([a, os.path.dirname(b), "--out", str(out), "--csv", str(table)]) == 0
    assert {"loss.png", "lr.png"} <= set(os.listdir(out))
    rows = list(csv.DictReader(open(table)))
    assert {r["run"] for r in rows} == {"lr5e-4", "lr1e-3"}
    assert {(r["run"], r["update"], r["value"]) for r in rows if r["scope"] == "val"} == {
        ("lr5e-4", "20", "4.0"), ("lr1e-3", "20", "3.0")}
    assert plot_main([a, b, "--csv", str(table), "--no_plots", "--label", "ours", "--label", "reference"]) == 0
    assert {r["run"] for r in csv.DictReader(open(table))} == {"ours", "reference"}
    capsys.readouterr()
    assert plot_main([a, b]) == 2 and "--out" in capsys.readouterr().err
    assert plot_main([a, b, "--label", "x", "--out", str(out)]) == 2


def test_single_log_command_is_unchanged(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = _write(tmp_path / "run" / "nvlog.json", [_train(u, 5.0 - u / 100) for u in (10, 20, 30)])
    assert plot_main([path]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "run" / "plots" / f) for f in ("loss.png", "lr.png")]


def test_run_labels_are_the_shortest_distinct_path_suffixes():
    from common.plotting import run_labels
    assert run_labels(["x/a/pretrain/nvlog.json", "x/b/pretrain/nvlog.json"]) == ["a/pretrain", "b/pretrain"]
    assert run_labels(["r/nvlog.json", "r/nvlog.json.1"]) == ["nvlog.json", "nvlog.json.1"]
    assert run_labels(["r/nvlog.json"]) == ["r"]
    # different file names in different run directories: still named by their directories (the documented rule),
    # not "nvlog.json" vs "nvlog.json.1", which names neither run
    assert run_labels(["runs/a/nvlog.json", "runs/b/nvlog.json.1"]) == ["a", "b"]
    assert run_labels(["x/a/nvlog.json", "x/a/nvlog.json.1", "x/b/nvlog.json"]) == [
        "a/nvlog.json", "a/nvlog.json.1", "b/nvlog.json"]


def test_inference_and_console_logs_get_a_clear_message(tmp_path, capsys):
    infer = _write(tmp_path / "infer" / "nvlog_infer.json", _params(w2v_path="m.pt")
                   + [_line([], {"eval_wer": 4.29, "data_latency_0_5": 1.5})])
    assert plot_main([infer, "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "no training records" in err and "eval_wer=4.29" in err
    twice = _write(tmp_path / "infer2" / "nvlog_infer.json", 2 * (_params(w2v_path="m.pt")  # two appended runs
                                                                   + [_line([], {"eval_wer": 4.29})]))
    assert plot_main([twice, "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "2 jobs" in err and "start at x=\n" not in err  # no empty list of per-interval starts
    stdout_log = tmp_path / "train.log"
    stdout_log.write_text("DLL 2026-01-01 00:00:00.000 - epoch    1 | iter  10/500 |  loss  6.100\n")
    assert plot_main([str(stdout_log), "--out", str(tmp_path / "p")]) == 1
    assert "stdout log" in capsys.readouterr().err


def test_log_axis_only_when_every_value_is_positive():
    from common.plotting import _log_axis, _smoothed
    assert _log_axis("lr", [1e-4, 5e-4, float("nan")], ("lr",))
    assert not _log_axis("lr", [1e-4, 0.0], ("lr",))  # a schedule ending at 0: a log axis would hide it
    assert not _log_axis("loss", [1.0, 2.0], ("lr",))
    assert _smoothed([1.0, 2.0, float("nan"), 4.0], 2) == [1.0, 1.5, 2.0, 4.0]


def test_csv_on_stdout_piped_into_a_reader_that_stops_early(tmp_path):
    """``--csv - | head``: the reader closing the pipe ends the command quietly (exit 0, no traceback), as for any
    Unix filter (the CSV is larger than a pipe's buffer, so the write does meet the closed pipe)."""
    import subprocess
    import sys

    path = _write(tmp_path / "run" / "nvlog.json", [_train(u, 5.0, train_grad_norm=1.0) for u in range(1, 3001)])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = f"'{sys.executable}' -m common.plotting '{path}' --csv - --no_plots | head -c 0"
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, cwd=root,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0 and "Traceback" not in res.stderr and "Broken pipe" not in res.stderr, res.stderr


def test_a_log_without_any_plotted_metric_says_so(tmp_path, capsys):
    """Records, but none of a plotted group (only ntokens): "no plottable metrics" and status 1, as for an empty
    log (not a silent status 0 with nothing written); with --csv the CSV is still the result (status 0)."""
    pytest.importorskip("matplotlib")
    path = _write(tmp_path / "run" / "nvlog.json", [_line([1, 1, 10], {"train_ntokens": 5.0, "train_update": 1})])
    assert plot_main([path, "--out", str(tmp_path / "p")]) == 1
    assert "no plottable metrics" in capsys.readouterr().err
    assert plot_main([path, "--out", str(tmp_path / "p"), "--csv", str(tmp_path / "c.csv")]) == 0
    assert "ntokens" in (tmp_path / "c.csv").read_text()


def test_a_directory_without_a_log_and_a_negative_smoothing_are_named_errors(tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    assert plot_main([str(tmp_path / "empty_run"), "--csv", "-", "--no_plots"]) == 2
    assert "is a directory without nvlog.json" in capsys.readouterr().err
    path = _write(tmp_path / "run" / "nvlog.json", [_train(u, 5.0 - u / 100) for u in (10, 20, 30)])
    assert plot_main([path, "--smooth", "-3", "--csv", "-", "--no_plots"]) == 2
    assert "--smooth -3" in capsys.readouterr().err


def test_the_report_counts_each_kind_of_skipped_line(tmp_path):
    from common.plotting import read_log

    path = tmp_path / "log.json"
    path.write_text('DLLL {"a": 1}\n\nDLL 2026 - x\nfoo\nDLLL [1]\nDLLL {"tr\n\n')
    records, report = read_log(str(path))
    assert records == [{"a": 1}]
    assert (report.lines, report.foreign_lines, report.stdout_lines, report.unreadable_lines,
            report.malformed_records) == (7, 2, 1, [6], 1)
