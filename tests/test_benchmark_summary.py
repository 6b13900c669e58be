"""common.benchmark_summary: the final empty-step dllogger records of a run -> benchmark_summary.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from common.benchmark_summary import final_summary, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _log(path, records):
    with open(path, "w") as f:
        f.write("not a dllogger line\n")
        for r in records:
            f.write("DLLL " + json.dumps(r) + "\n")
        f.write('DLLL {"truncated": \n')


def _rec(step, data):
    return {"timestamp": "1", "datetime": "x", "elapsedtime": "0", "type": "LOG", "step": step, "data": data}


META = {"timestamp": "1", "type": "METADATA", "metric": "train_loss", "metadata": {"unit": None}}


def test_last_group_of_empty_step_records_is_merged():
    records = [
        _rec("PARAMETER", {"lr": 1}), _rec([1, 1, 2], {"train_loss": 9.0}),
        _rec([], {"train_avg_loss": 8.0, "benchmark_epochs_num": 3}), _rec([], {"val_loss": 7.5}),  # job 1
        _rec("PARAMETER", {"lr": 1}), _rec([2, 1, 2], {"train_loss": 6.0}),
        _rec([], {"train_avg_loss": 5.0, "train_avg_ntokens/s": 100.0}), META, _rec([], {"val_loss": 4.5}),  # job 2
    ]
    assert final_summary(records) == {"train_avg_loss": 5.0, "train_avg_ntokens/s": 100.0, "val_loss": 4.5}
    assert final_summary(records[:2]) == {}


def test_summarize_writes_json_and_refuses_unfinished_runs(tmp_path):
    log = tmp_path / "nvlog.json"
    _log(log, [_rec([1, 1, 1], {"train_loss": 1.0}), _rec([], {"throughput": 12.5, "latency_p99": float("nan")})])
    out = tmp_path / "sub" / "benchmark_summary.json"
    assert summarize(str(log), str(out)) == {"throughput": 12.5, "latency_p99": None}
    assert json.loads(out.read_text()) == {"throughput": 12.5, "latency_p99": None}
    _log(log, [_rec([1, 1, 1], {"train_loss": 1.0})])
    with pytest.raises(ValueError, match="no final summary"):
        summarize(str(log))
    with pytest.raises(FileNotFoundError):
        summarize(str(tmp_path / "missing.json"))


def test_command_line(tmp_path):
    log = tmp_path / "nvlog.json"
    _log(log, [_rec([], {"a": 1})])
    out = tmp_path / "s.json"
    res = subprocess.run([sys.executable, "-m", "common.benchmark_summary", str(log), "--output", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"a": 1} and json.loads(out.read_text()) == {"a": 1}
    res = subprocess.run([sys.executable, "-m", "common.benchmark_summary", str(tmp_path / "none")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1 and "no such dllogger log" in res.stderr
