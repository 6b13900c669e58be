"""A shortened `make demo` end to end (slow: run with `pytest -m slow`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (scripts/install_system_deps.sh)")
def test_short_demo_end_to_end(tmp_path):
    env = dict(os.environ, RESULTS_DIR=str(tmp_path / "results"), DATA_DIR=str(tmp_path / "data"),
               TRAIN_MINUTES="3", EVAL_MINUTES="1", FT_MINUTES="2", FT_SUBSET="train-2min",
               PT_UPDATES="10", FT_UPDATES="10", THREADS="2")
    res = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    m = re.search(r"test-clean WER: ([0-9.]+)%", out)
    assert m, out[-2000:]
    summary = json.load(open(tmp_path / "results" / "summary.json"))
    assert abs(summary["test-clean_wer"] - float(m.group(1))) < 0.01
    # the printed WER is the one inference.py logged (the lexicon + LM beam search's), and greedy is logged beside it
    logged = {}
    for line in open(tmp_path / "results" / "infer_test-clean" / "nvlog_infer.json"):
        if line.startswith("DLLL "):
            logged.update(json.loads(line[5:]).get("data", {}))
    assert abs(logged["eval_wer"] - float(m.group(1))) < 0.01 and "eval_wer_greedy" in logged
    assert "greedy decoding" in out and os.path.exists(tmp_path / "results" / "lm" / "lm.arpa")
    assert os.path.exists(tmp_path / "results" / "plots" / "pretrain")
    # a rerun skips every finished stage
    res2 = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res2.returncode == 0 and "pretrain: already done" in res2.stdout


def test_demo_summary_reads_the_update_from_train_update_and_falls_back_to_epoch_and_iteration():
    """Logs with ``train_update`` are read as they say, also when ``--max_update`` ended an epoch early and the
    next job counted its epochs from there; reference-style logs (no field) use (epoch - 1) x per-epoch + iteration."""
    from utils.demo_summary import _last_update

    ours = [
        {"step": [1, 10, 10], "data": {"train_loss": 3.0, "train_update": 10}},
        # a resumed job whose first epoch was cut short: (3 - 1) * 10 + 3 = 23 would be wrong
        {"step": [3, 3, 10], "data": {"train_loss": 2.0, "train_update": 16}},
        {"step": [3], "data": {"val_loss": 2.5}},
    ]
    assert _last_update(ours) == 16
    reference = [
        {"step": [1, 10, 10], "data": {"train_loss": 3.0}},
        {"step": [2, 4, 10], "data": {"train_loss": 2.0}},
        {"step": [2], "data": {"val_loss": 2.5}},
    ]
    assert _last_update(reference) == 14
    assert _last_update([]) is None
