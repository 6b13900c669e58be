"""dllogger-format writer, stdout rendering, TensorBoard fallback, progress line and plot tool (REFERENCE.md §5.9)."""

import io
import json
import os
import subprocess
import sys
import types
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

from common import logging as wlog
from common.logging import (
    JSONStreamWriter,
    MetricLogger,
    StdoutWriter,
    TensorBoardLogger,
    build_logger,
    format_metric,
    format_step,
    genuine_dllogger,
    inference_metadata,
    read_dllogger_log,
    training_metadata,
    unique_log_path,
)
from common.plotting import collect_series, main as plot_main
from common.progress import Progress, format_duration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
    def __init__(self):
        self.t = datetime(2026, 1, 2, 3, 4, 5, 600000)

    def __call__(self):
        self.t += timedelta(seconds=0.5)
        return self.t


def test_write_and_parse_back(tmp_path):
    path = str(tmp_path / "nvlog.json")
    clock = Clock()
    logger = MetricLogger([JSONStreamWriter(wlog.Verbosity.VERBOSE, path)], clock=clock)
    logger.log_parameters({"lr": 5e-4, "mode": "pretrain", "update_freq": 1})
    logger.metadata("train_loss", {"name": " loss", "format": ":>6.3f"})
    logger.log((1, 10, 500), {"train_loss": np.float32(6.5), "train_lr": torch.tensor(1e-4, dtype=torch.float64),
                              "train_ntokens": np.int64(1234)})
    logger.log((1,), {"val_loss": 5.25})
    logger.log((), {"train_avg_took": 12.0, "benchmark_epochs_num": 3})
    logger.close()

    lines = open(path).read().splitlines()
    assert all(line.startswith("DLLL {") for line in lines)
    raw = [json.loads(line[len("DLLL "):]) for line in lines]
    # exact key order of dllogger v1.0.0
    assert list(raw[0]) == ["timestamp", "datetime", "elapsedtime", "type", "step", "data"]
    # one PARAMETER record per argument, in order (reference §5.9)
    assert [(r["step"], r["data"]) for r in raw[:3]] == [
        ("PARAMETER", {"lr": 5e-4}), ("PARAMETER", {"mode": "pretrain"}), ("PARAMETER", {"update_freq": 1})]
    assert raw[0]["datetime"] == "2026-01-02 03:04:06.600000"
    assert raw[0]["elapsedtime"] == "0.5" and float(raw[0]["timestamp"]) > 0
    assert list(raw[3]) == ["timestamp", "elapsedtime", "datetime", "type", "metric", "metadata"]
    assert raw[3]["metric"] == "train_loss" and raw[3]["metadata"]["format"] == ":>6.3f"

    recs = read_dllogger_log(path)
    logs = [r for r in recs if r["type"] == "LOG"]
    assert [r["step"] for r in logs] == ["PARAMETER"] * 3 + [[1, 10, 500], [1], []]
    assert logs[3]["data"] == {"train_loss": 6.5, "train_lr": 1e-4, "train_ntokens": 1234}
    assert logs[4]["data"]["val_loss"] == 5.25


def test_parse_skips_truncated_and_foreign_lines(tmp_path):
    path = tmp_path / "log.json"
    path.write_text('DLLL {"type": "LOG", "step": [1], "data": {"x": 1}}\nnot a record\nDLLL [1, 2]\nDLLL {"type": "LO')
    assert read_dllogger_log(str(path)) == [{"type": "LOG", "step": [1], "data": {"x": 1}}]


def test_step_and_metric_formats():
    assert format_step((1, 10, 500)) == "epoch    1 | iter  10/500"
    assert format_step((3,)) == "epoch    3"
    assert format_step(()) == ""
    assert format_step("PARAMETER") == "PARAMETER"
    meta = training_metadata()
    assert format_metric("train_loss", meta["train_loss"], 6.54321) == "|  loss  6.543"
    assert format_metric("train_ntokens", meta["train_ntokens"], 123456.0) == "| train_ntokens :    123456 tokens"
    assert format_metric("train_lr", meta["train_lr"], 5e-4) == "| lr 5.00e-04"
    assert format_metric("val_wer", meta["val_wer"], 8.878) == "|   avg val  wer   8.88"
    assert format_metric("x", {}, 3) == "| x :  3"


def test_stdout_backend_line():
    buf = io.StringIO()
    logger = MetricLogger([StdoutWriter(stream=buf)], clock=Clock())
    logger.register_metadata(training_metadata(("train",)))
    logger.log((2, 5, 100), {"train_loss": 1.0, "train_took": 0.25})
    line = buf.getvalue().strip()
    assert line.startswith("DLL 2026-01-02 03:04:")
    assert line.endswith("- epoch    2 | iter   5/100 |  loss  1.000 | took 0.25 s")


def test_metadata_tables():
    meta = training_metadata()
    assert meta["train_avg_loss"]["name"] == "avg train  loss"
    assert meta["val_accuracy"]["name"] == "  avg val acc"
    assert meta["train_loss_scale"] == {"name": "loss scale", "format": ":>3.2e"}
    assert meta["val_ntokens/s"] == {"unit": "tokens/s", "format": ":>8.2f"}
    inf = inference_metadata()
    assert inf["eval_wer"] == {"name": "WER", "format": ":>3.2f", "unit": "%"}
    assert inf["dnn_latency_0_99"]["unit"] == "ms" and "data+dnn_latency_0_5" in inf


def test_unique_log_path(tmp_path):
    p = str(tmp_path / "nvlog.json")
    assert unique_log_path(p) == p + ".1"
    for suffix in ("1", "7", "x"):
        open(f"{p}.{suffix}", "w").close()
    assert unique_log_path(p) == p + ".8"


def test_build_logger_appends_and_writes_copy(tmp_path):
    out = str(tmp_path / "run")
    for job in range(2):
        buf = io.StringIO()
        logger = build_logger(out, stream=buf, metadata=training_metadata(("train",)), use_dllogger=False)
        logger.log((1, job + 1, 10), {"train_loss": float(job)})
        logger.close()
        assert "train_loss" not in buf.getvalue() and " loss" in buf.getvalue()
    main_log = read_dllogger_log(os.path.join(out, "nvlog.json"))
    assert [r["data"]["train_loss"] for r in main_log if r["type"] == "LOG"] == [0.0, 1.0]   # appended
    assert [r["data"]["train_loss"] for r in read_dllogger_log(os.path.join(out, "nvlog.json.2"))
            if r["type"] == "LOG"] == [1.0]
    assert build_logger(out, rank=1).backends == []


def test_genuine_dllogger_detection(monkeypatch):
    monkeypatch.setitem(sys.modules, "dllogger", types.ModuleType("dllogger"))  # an impostor
    assert genuine_dllogger() is None
    fake = types.ModuleType("dllogger")
    fake.JSONStreamBackend = object
    fake.StdOutBackend = object
    monkeypatch.setitem(sys.modules, "dllogger", fake)
    assert genuine_dllogger() is fake


def test_tensorboard_optional(tmp_path):
    try:
        import tensorboard  # noqa: F401
        have_tb = True
    except ImportError:
        have_tb = False
    if not have_tb:
        with pytest.warns(RuntimeWarning, match="tensorboard"):
            tb = TensorBoardLogger(str(tmp_path))
        assert not tb.enabled
        tb.log_scalars("train", 1, {"loss": 1.0})     # no-op, no error
        tb.close()
        assert not os.path.exists(tmp_path / "train_inner")
    else:
        tb = TensorBoardLogger(str(tmp_path))
        tb.log_scalars("train", 1, {"loss": 1.0, "temp": 2.0})
        tb.close()
        assert os.listdir(tmp_path / "train_inner")
    assert not TensorBoardLogger(str(tmp_path), enabled=False).enabled


def test_progress_rate_and_eta():
    t = [0.0]
    buf = io.StringIO()
    p = Progress(total=100, desc="inference", interval_s=10.0, stream=buf, clock=lambda: t[0])
    t[0] = 2.0
    first = p.update(10)
    assert first == "inference: 10/100 (10.0%) 5.00 it/s elapsed 0:00:02 ETA 0:00:18"
    t[0] = 5.0
    assert p.update(10) is None                    # within the print interval
    t[0] = 20.0
    assert p.update(30) == "inference: 50/100 (50.0%) 2.50 it/s elapsed 0:00:20 ETA 0:00:20"
    t[0] = 40.0
    assert p.update(50).startswith("inference: 100/100 (100.0%)")
    assert p.close() is None
    assert len(buf.getvalue().splitlines()) == 3
    assert format_duration(3725.2) == "1:02:05" and format_duration(float("nan")) == "?"


def test_progress_scaled_resumed_and_completed_once():
    """Bytes shown as MB, a resumed download's first 4 MB excluded from the rate, and the completed count printed
    once however often it is reported again."""
    t = [0.0]
    buf = io.StringIO()
    p = Progress(total=10e6, desc="dev-clean.tar.gz", unit="MB", scale=1e6, initial=4e6, interval_s=1.0, stream=buf,
                 clock=lambda: t[0])
    t[0] = 2.0
    assert p.update_to(6e6) == "dev-clean.tar.gz: 6.0/10.0 MB (60.0%) 1.00 MB/s elapsed 0:00:02 ETA 0:00:04"
    t[0] = 4.0
    assert p.update_to(10e6).startswith("dev-clean.tar.gz: 10.0/10.0 MB (100.0%) 1.50 MB/s")
    assert p.update(0) is None and p.update_to(10e6) is None and p.close() is None
    assert len(buf.getvalue().splitlines()) == 2
    unknown = Progress(desc="x", stream=buf, clock=lambda: t[0])
    assert unknown.update(3) == "x: 3 0.00 it/s elapsed 0:00:00"  # no total: no percentage, no ETA


def _write_training_log(path):
    logger = MetricLogger([JSONStreamWriter(wlog.Verbosity.VERBOSE, path)], clock=Clock())
    logger.log_parameters({"lr": 5e-4})
    for epoch in (1, 2):
        for it in (5, 10):
            logger.log((epoch, it, 10), {"train_loss": 7.0 - epoch - it / 10, "train_accuracy": 0.1 * epoch,
                                         "train_code_perplexity": 300.0, "train_lr": 1e-4, "train_ntokens/s": 1e5})
        logger.log((epoch,), {"train_avg_loss": 6.0 - epoch, "val_loss": 6.5 - epoch})
    logger.log((), {"train_avg_loss": 4.5})
    logger.close()


def test_plot_series_from_log(tmp_path):
    path = str(tmp_path / "nvlog.json")
    _write_training_log(path)
    series, xlabel = collect_series(read_dllogger_log(path))
    assert xlabel == "update"
    assert [x for x, _ in series["train_loss"]] == [5.0, 10.0, 15.0, 20.0]
    assert series["val_loss"] == [(10.0, 5.5), (20.0, 4.5)]          # epoch e -> e * steps_per_epoch
    assert "lr" not in series


def test_plot_series_of_a_resumed_run(tmp_path):
    """A job resumed from update 10 after reaching update 20 appends updates 15, 20 and 25 again to the same log:
    each update appears once, in order, with the resumed job's value."""
    path = str(tmp_path / "nvlog.json")
    logger = MetricLogger([JSONStreamWriter(wlog.Verbosity.VERBOSE, path)], clock=Clock())
    for (epoch, it), loss in zip([(1, 5), (1, 10), (2, 5), (2, 10)], [4.0, 3.0, 2.5, 2.0]):
        logger.log((epoch, it, 10), {"train_loss": loss})
    for (epoch, it), loss in zip([(2, 5), (2, 10), (3, 5)], [2.4, 1.9, 1.5]):  # the resumed job
        logger.log((epoch, it, 10), {"train_loss": loss})
    logger.close()
    series, _ = collect_series(read_dllogger_log(path))
    assert series["train_loss"] == [(5.0, 4.0), (10.0, 3.0), (15.0, 2.4), (20.0, 1.9), (25.0, 1.5)]


def test_plot_cli(tmp_path):
    path = str(tmp_path / "nvlog.json")
    _write_training_log(path)
    out = tmp_path / "plots"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        proc = subprocess.run([sys.executable, "-m", "common.plotting", path, "--out", str(out)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "matplotlib" in proc.stderr
        return
    assert plot_main([path, "--out", str(out)]) == 0
    assert {"loss.png", "accuracy.png", "perplexity.png", "lr.png", "throughput.png"} <= set(os.listdir(out))


def test_plot_cli_missing_file(tmp_path, capsys):
    assert plot_main([str(tmp_path / "nope.json")]) == 2
    assert "no such log file" in capsys.readouterr().err


def test_every_record_is_on_disk_as_soon_as_it_is_logged(tmp_path):
    """A job killed without warning (SIGKILL, the OOM killer, a lost node) keeps every record it had logged: the
    JSON log is flushed per record, not only at the end of training."""
    path = str(tmp_path / "nvlog.json")
    logger = MetricLogger([JSONStreamWriter(wlog.Verbosity.VERBOSE, path)], clock=Clock())
    logger.log((1, 1, 10), {"train_loss": 7.0})
    logger.log((1, 2, 10), {"train_loss": 6.5})
    on_disk = [json.loads(line[len("DLLL "):]) for line in open(path).read().splitlines()]  # logger still open
    assert [r["data"]["train_loss"] for r in on_disk] == [7.0, 6.5]
    logger.close()


def test_every_line_of_a_log_is_classified(tmp_path):
    """iter_dllogger_log, the one parser of dllogger files (read_dllogger_log and common.plotting use it): each
    line's kind, by hand."""
    from common.logging import iter_dllogger_log

    path = tmp_path / "log.json"
    path.write_text('DLLL {"a": 1}\n\nDLL 2026 - x\nfoo\nDLLL [1]\nDLLL {"tr\n\n')
    assert [(n, k) for n, k, _ in iter_dllogger_log(str(path))] == [
        (1, "record"), (2, "blank"), (3, "stdout"), (4, "foreign"), (5, "malformed"), (6, "unreadable"), (7, "blank")]
    assert read_dllogger_log(str(path)) == [{"a": 1}]
