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
