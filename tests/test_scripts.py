"""Recipe shell scripts (scripts/*.sh): the commands they print under DRY_RUN=1 for the reference's variables
(REFERENCE.md §7), their validation messages, the launcher, the Docker helpers, and (slow) real CPU runs."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")

RECIPES = [
    "pretrain_base.sh", "pretrain_large.sh", "pretrain_base_benchmark.sh",
    "finetune_vox_960h.sh", "finetune_base_960h.sh", "finetune_base_100h.sh", "finetune_base_10h.sh",
    "finetune_base_1h.sh", "finetune_vox_100h.sh", "finetune_vox_960h_cv.sh", "finetune_base_benchmark.sh",
    "inference.sh", "inference_benchmark.sh",
]


def _env(**extra: str) -> dict:
    """A clean environment: no recipe variable leaks in from the caller's shell."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(DRY_RUN="1", CUDA_AVAILABLE="true", PYTHON="python3")
    env.update({k: str(v) for k, v in extra.items()})
    return {k: v for k, v in env.items() if v is not None}


def run(script: str, *args: str, cwd: str = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(SCRIPTS, script), *args], capture_output=True, text=True,
                          env=_env(**env), cwd=cwd, timeout=60)


def command_lines(res: subprocess.CompletedProcess) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in res.stdout.splitlines() if line.startswith("+ ")]


def command(script: str, *args: str, **env: str) -> list[str]:
    """The entry-point command (train.py / inference.py) a script prints under DRY_RUN."""
    res = run(script, *args, **env)
    assert res.returncode == 0, res.stdout + res.stderr
    cmds = [c for c in command_lines(res) if any(w.endswith(("train.py", "inference.py")) for w in c)]
    assert len(cmds) == 1, res.stdout
    return cmds[0]


def flags(cmd: list[str]) -> dict[str, list[str]]:
    """--flag -> the words after it up to the next --flag (``--a=b`` -> {"--a": ["b"]}); a repeated flag keeps
    the last occurrence (argparse semantics)."""
    out: dict[str, list[str]] = {}
    start = next(i for i, w in enumerate(cmd) if w.endswith(("train.py", "inference.py"))) + 1
    key = None
    for w in cmd[start:]:
        if w.startswith("--"):
            if "=" in w:
                k, v = w.split("=", 1)
                out[k] = [v]
                key = None
            else:
                key = w
                out[key] = []
        elif key is not None:
            out[key].append(w)
    return out


def value(f: dict[str, list[str]], flag: str) -> str:
    assert flag in f, f"{flag} missing from {sorted(f)}"
    assert len(f[flag]) == 1, (flag, f[flag])
    return f[flag][0]


def check(f: dict[str, list[str]], expected: dict[str, object]) -> None:
    """expected: flag -> str value, list of values, True (bare flag present) or None (absent)."""
    for flag, want in expected.items():
        if want is None:
            assert flag not in f, f"{flag} should be absent, got {f[flag]}"
        elif want is True:
            assert flag in f and f[flag] == [], f"{flag} should be a bare flag, got {f.get(flag)}"
        elif isinstance(want, list):
            assert f.get(flag) == want, (flag, f.get(flag), want)
        else:
            assert value(f, flag) == want, (flag, f.get(flag), want)


def launcher(cmd: list[str]) -> list[str]:
    i = next(i for i, w in enumerate(cmd) if w.endswith(("train.py", "inference.py")))
    return cmd[:i + 1]


# ---------------------------------------------------------------------------------------------------------------------
# pre-training
# ---------------------------------------------------------------------------------------------------------------------

PRETRAIN_FIXED = {"--resume": True, "--clip_norm": "25", "--weight_decay": "0.01", "--lr_policy": "poly",
                  "--lr_poly_power": "1.0", "--skip_invalid_size_inputs_valid_test": True, "--infonce": True,
                  "--quantize_targets": True, "--mha": "pyt"}

PRETRAIN_BASE = {
    "--data": "/datasets/LibriSpeech", "--train_subset": "train-full-960", "--valid_subset": "dev-other",
    "--output_dir": "results/pretrain_base", "--max_tokens": "1400000", "--max_tokens_valid": "1400000",
    "--num_concat_batches": "8", "--update_freq": "1", "--min_sample_size": "32000", "--max_sample_size": "250000",
    "--max_update": "400000", "--warmup_updates": "32000", "--optimizer": "adam", "--lr": "0.0005",
    "--loss_weights": ["0.1", "10.0"], "--ema": "0.0", "--seed": None, "--cudnn_benchmark": None,
    "--normalize": None, "--mask_prob": "0.65", "--extractor_mode": "default", "--layer_norm_first": None,
    "--final_dim": "256", "--latent_temp": ["2.0", "0.5", "0.999995"], "--encoder_layerdrop": "0.05",
    "--dropout_input": "0.1", "--dropout_features": "0.1", "--dropout": "0.1", "--attention_dropout": "0.1",
    "--conv_bias": None, "--encoder_layers": "12", "--encoder_embed_dim": "768", "--encoder_ffn_embed_dim": "3072",
    "--encoder_attention_heads": "12", "--feature_grad_mult": "0.1", "--hourglass_transformer": "[2,(8,4),2]",
    "--no_save": None, "--save_frequency": "1", "--epochs_this_job": None, "--fp16": None, "--bf16": None,
    "--cpu": None, "--preset": None, **PRETRAIN_FIXED,
}

PRETRAIN_LARGE = {
    "--data": "/datasets/LibriSpeech", "--train_subset": "train-full-960", "--valid_subset": "dev-other",
    "--output_dir": "results/pretrain_large", "--max_tokens": "1200000", "--max_tokens_valid": "1200000",
    "--num_concat_batches": "1", "--update_freq": "16", "--min_sample_size": "32000", "--max_sample_size": "320000",
    "--max_update": "800000", "--warmup_updates": "32000", "--optimizer": "adam", "--lr": "0.005",
    "--loss_weights": ["0.1", "0.0"], "--ema": "0.0", "--seed": None, "--normalize": True, "--mask_prob": "0.65",
    "--extractor_mode": "layer_norm", "--layer_norm_first": True, "--final_dim": "768",
    "--latent_temp": ["2.0", "0.1", "0.999995"], "--encoder_layerdrop": "0.0", "--dropout_input": "0.0",
    "--dropout_features": "0.0", "--dropout": "0.0", "--attention_dropout": "0.0", "--conv_bias": True,
    "--encoder_layers": "24", "--encoder_embed_dim": "1024", "--encoder_ffn_embed_dim": "4096",
    "--encoder_attention_heads": "16", "--feature_grad_mult": "1.0", "--hourglass_transformer": None,
    "--save_frequency": "1", **PRETRAIN_FIXED,
}


def test_pretrain_base_defaults():
    cmd = command("pretrain_base.sh")
    assert launcher(cmd)[-2:] == ["--nproc_per_node=8", "train.py"] and launcher(cmd)[0].endswith("torchrun")
    assert cmd[len(launcher(cmd))] == "pretrain"
    check(flags(cmd), PRETRAIN_BASE)


def test_pretrain_large_defaults():
    check(flags(command("pretrain_large.sh")), PRETRAIN_LARGE)


def test_pretrain_base_prints_reference_summary_line():
    res = run("pretrain_base.sh")
    assert "FP16=false, BF16=false, 1x8x(1400000x8)x1" in res.stdout


def test_pretrain_hourglass_can_be_disabled_and_changed():
    check(flags(command("pretrain_base.sh", HOURGLASS_CONFIG="")), {"--hourglass_transformer": None})
    check(flags(command("pretrain_base.sh", HOURGLASS_CONFIG="[3,(6,2),3]")),
          {"--hourglass_transformer": "[3,(6,2),3]"})
    check(flags(command("pretrain_large.sh", HOURGLASS_CONFIG="[2,(8,4),2]")),
          {"--hourglass_transformer": "[2,(8,4),2]"})


@pytest.mark.parametrize("script", ["pretrain_base.sh", "pretrain_large.sh", "finetune_vox_960h.sh",
                                    "finetune_base_10h.sh"])
def test_precision_flags(script):
    f = flags(command(script, FP16="true"))
    check(f, {"--fp16": True, "--fp32_cosine_sim": True, "--fp32_conv_norms": True, "--fp32_pos_conv": True,
              "--bf16": None})
    f = flags(command(script, BF16="true"))
    # ours adds --fp32_cosine_sim to the reference's BF16 preset (BF16 contrastive logits tie; DEVIATIONS)
    check(f, {"--bf16": True, "--fp32_pos_conv": True, "--fp32_cosine_sim": True, "--fp16": None,
              "--fp32_conv_norms": None})
    cmd = command(script, FP16="true", FP32_POS_CONV="true", FP32_TRANSFORMER_LAYERNORM="true")
    assert cmd.count("--fp32_pos_conv") == 1 and "--fp32_transformer_layernorm" in cmd
    check(flags(command(script)), {"--fp16": None, "--bf16": None, "--fp32_pos_conv": None})


def test_pretrain_optional_variables():
    f = flags(command("pretrain_base.sh", SEED="7", EPOCHS_THIS_JOB="3", NO_SAVE="true", CUDNN_BENCHMARK="true",
                      EMA="0.999", NORMALIZE="true", CONV_BIAS="true", LAYER_NORM_FIRST="true", SAVE_FREQUENCY="5",
                      LATENT_TEMP="1.0 0.2 0.99", LOSS_WEIGHTS="0.2 5", MIN_SAMPLE_SIZE="16000"))
    check(f, {"--seed": "7", "--epochs_this_job": "3", "--no_save": True, "--cudnn_benchmark": True, "--ema": "0.999",
              "--normalize": True, "--conv_bias": True, "--layer_norm_first": True, "--save_frequency": "5",
              "--latent_temp": ["1.0", "0.2", "0.99"], "--loss_weights": ["0.2", "5"],
              "--min_sample_size": "16000"})


def test_pretrain_preset_replaces_the_architecture_flags():
    f = flags(command("pretrain_base.sh", PRESET="tiny"))
    check(f, {"--preset": "tiny", "--max_tokens": "1400000", "--num_concat_batches": "8", "--lr": "0.0005"})
    for flag in ("--encoder_layers", "--encoder_embed_dim", "--final_dim", "--latent_temp", "--dropout",
                 "--mask_prob", "--feature_grad_mult", "--hourglass_transformer", "--extractor_mode"):
        assert flag not in f, flag
    # variables set explicitly still apply on top of the preset
    f = flags(command("pretrain_large.sh", PRESET="tiny", ENCODER_LAYERS="2", NORMALIZE="true", MASK_PROB="0.3"))
    check(f, {"--preset": "tiny", "--encoder_layers": "2", "--normalize": True, "--mask_prob": "0.3",
              "--encoder_embed_dim": None})
    # an explicit empty HOURGLASS_CONFIG turns the preset's Hourglass off
    check(flags(command("pretrain_base.sh", PRESET="base", HOURGLASS_CONFIG="")), {"--hourglass_transformer": [""]})


def test_extra_arguments_are_appended():
    for script in ("pretrain_base.sh", "finetune_base_10h.sh", "inference.sh"):
        cmd = command(script, "--num_workers", "0", "--log_frequency", "5")
        assert cmd[-4:] == ["--num_workers", "0", "--log_frequency", "5"], script


def test_values_with_spaces_are_quoted():
    res = run("pretrain_base.sh", OUTPUT_DIR="my results/it's")
    line = next(line for line in res.stdout.splitlines() if line.startswith("+ "))
    assert value(flags(shlex.split(line[2:])), "--output_dir") == "my results/it's"


def test_entry_point_is_absolute_outside_the_repository(tmp_path):
    res = run("pretrain_base.sh", cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    cmd = command_lines(res)[0]
    assert os.path.join(ROOT, "train.py") in cmd


# ---------------------------------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------------------------------


def test_launcher_single_gpu_and_cpu():
    cmd = command("pretrain_base.sh", NUM_GPUS="1")
    assert launcher(cmd) == ["python3", "train.py"] and "--cpu" not in cmd
    # no CUDA: NUM_GPUS defaults to 1 and --cpu is added
    cmd = command("pretrain_base.sh", CUDA_AVAILABLE="false")
    assert launcher(cmd) == ["python3", "train.py"] and "--cpu" in cmd
    # no CUDA but an explicit NUM_GPUS: several CPU processes (gloo) through torchrun
    cmd = command("pretrain_base.sh", CUDA_AVAILABLE="false", NUM_GPUS="2")
    assert "--nproc_per_node=2" in launcher(cmd) and "--cpu" in cmd
    # DEVICE wins over the automatic --cpu; CPU=true forces it on a CUDA machine; CPU=false never adds it
    cmd = command("pretrain_base.sh", CUDA_AVAILABLE="false", DEVICE="cuda:1")
    assert "--cpu" not in cmd and value(flags(cmd), "--device") == "cuda:1"
    assert "--cpu" in command("finetune_base_10h.sh", CPU="true")
    assert "--cpu" not in command("inference.sh", CUDA_AVAILABLE="false", CPU="false")


def test_cuda_probe_runs_python_once_when_not_told(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "fakepython"
    fake.write_text(f"#!/bin/sh\necho probe >> {calls}\necho False\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = _env(PYTHON=str(fake))
    del env["CUDA_AVAILABLE"]
    for script in ("pretrain_base.sh", "pretrain_base_benchmark.sh", "finetune_base_benchmark.sh", "inference.sh"):
        calls.write_text("")
        res = subprocess.run(["bash", os.path.join(SCRIPTS, script)], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=60)
        assert res.returncode == 0, res.stderr
        cmd = command_lines(res)[0]
        assert cmd[0] == str(fake) and "--cpu" in cmd and "--nproc_per_node" not in " ".join(cmd), cmd
        assert calls.read_text().split() == ["probe"], script  # the result is passed down to the called scripts


def test_an_interpreter_without_torch_is_a_one_line_error(tmp_path):
    """PYTHON (or python3 without .venv) that cannot import torch: stopped before the launch with one line naming
    the interpreter and the remedy, not a Python traceback after the command was printed; DRY_RUN only warns."""
    fake, marker = _fake_python(tmp_path, prelude='case "$*" in *"import torch"*) exit 1 ;; esac\n')
    data = _placeholder_subsets(tmp_path)
    env = _env(DRY_RUN="0", PYTHON=fake, DATASET_DIR=str(data), TRAIN_SUBSET="train", VALID_SUBSET="valid",
               OUTPUT_DIR=str(tmp_path / "o"))
    del env["CUDA_AVAILABLE"]
    for script in ("pretrain_base.sh", "inference.sh"):
        res = subprocess.run(["bash", os.path.join(SCRIPTS, script)], capture_output=True, text=True, env=env,
                             cwd=ROOT, timeout=60)
        errors = [line for line in res.stderr.splitlines() if line.startswith("ERROR:")]
        assert res.returncode == 2 and len(errors) == 1, res.stderr
        assert f"PYTHON='{fake}' cannot import torch" in errors[0] and "make venv" in errors[0]
        assert not command_lines(res) and not marker.exists()
    assert not (tmp_path / "o").exists()
    env["DRY_RUN"] = "1"
    res = subprocess.run(["bash", os.path.join(SCRIPTS, "pretrain_base.sh")], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60)
    assert res.returncode == 0 and "cannot import torch" in res.stderr and "--cpu" in command_lines(res)[0]


def test_launcher_multi_gpu_and_multi_node():
    assert launcher(command("finetune_base_960h.sh", NUM_GPUS="8"))[1:] == ["--nproc_per_node=8", "train.py"]
    assert launcher(command("pretrain_base.sh", NUM_GPUS="4", MASTER_PORT="29555"))[1:] == [
        "--nproc_per_node=4", "--master_port=29555", "train.py"]
    lw = launcher(command("pretrain_base.sh", NUM_GPUS="8", NUM_NODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1",
                          MASTER_PORT="1234"))
    assert lw[1:] == ["--nproc_per_node=8", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                      "--master_port=1234", "train.py"]
    assert launcher(command("inference.sh", NUM_GPUS="2"))[1:] == ["--nproc_per_node=2", "inference.py"]
    assert launcher(command("inference.sh")) == ["python3", "inference.py"]


def test_distributed_overrides_the_launcher():
    assert launcher(command("pretrain_base.sh", NUM_GPUS="8", DISTRIBUTED="")) == ["python3", "train.py"]
    assert launcher(command("pretrain_base.sh", DISTRIBUTED="-m torch.distributed.launch --nproc_per_node=4")) == [
        "python3", "-m", "torch.distributed.launch", "--nproc_per_node=4", "train.py"]
    assert launcher(command("finetune_vox_960h.sh", DISTRIBUTED="torchrun --standalone --nproc_per_node=2")) == [
        "torchrun", "--standalone", "--nproc_per_node=2", "train.py"]


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------

BAD = [
    ("pretrain_base.sh", {"NUM_GPUS": "abc"}, "NUM_GPUS"),
    ("pretrain_base.sh", {"NUM_GPUS": "0"}, "NUM_GPUS"),
    ("pretrain_base.sh", {"FP16": "maybe"}, "FP16"),
    ("pretrain_base.sh", {"MAX_TOKENS": "-5"}, "MAX_TOKENS"),
    ("pretrain_base.sh", {"FP16": "true", "BF16": "true"}, "BF16"),
    ("pretrain_base.sh", {"LEARNING_RATE": "fast"}, "LEARNING_RATE"),
    ("pretrain_base.sh", {"MASK_PROB": "1.5"}, "MASK_PROB"),
    ("pretrain_base.sh", {"LATENT_TEMP": "2.0 0.5"}, "LATENT_TEMP"),
    ("pretrain_base.sh", {"LOSS_WEIGHTS": "0.1 x"}, "LOSS_WEIGHTS"),
    ("pretrain_base.sh", {"PRESET": "huge"}, "PRESET"),
    ("pretrain_large.sh", {"EXTRACTOR_MODE": "fancy"}, "EXTRACTOR_MODE"),
    ("pretrain_large.sh", {"SEED": "x1"}, "SEED"),
    ("pretrain_large.sh", {"NORMALIZE": "yes"}, "NORMALIZE"),
    ("pretrain_large.sh", {"NUM_NODES": "2"}, "MASTER_ADDR"),
    ("pretrain_large.sh", {"NUM_NODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "NODE_RANK"),
    ("pretrain_large.sh", {"MASTER_PORT": "70000"}, "MASTER_PORT"),
    ("pretrain_large.sh", {"DRY_RUN": "maybe"}, "DRY_RUN"),
    ("pretrain_large.sh", {"CUDA_AVAILABLE": "perhaps"}, "CUDA_AVAILABLE"),
    ("pretrain_base_benchmark.sh", {"NUM_EPOCHS": "five"}, "NUM_EPOCHS"),
    ("pretrain_base_benchmark.sh", {"BF16": "true", "FP16": "true"}, "BF16"),
    ("finetune_vox_960h.sh", {"MAX_UPDATE": "many"}, "MAX_UPDATE"),
    ("finetune_base_10h.sh", {"BATCH_SIZE": "0"}, "BATCH_SIZE"),
    ("finetune_base_1h.sh", {"MASK_CHANNEL_PROB": "-0.1"}, "MASK_CHANNEL_PROB"),
    ("finetune_base_100h.sh", {"NO_SAVE": "1"}, "NO_SAVE"),
    ("finetune_base_960h.sh", {"CPU": "true", "DEVICE": "cuda:0"}, "DEVICE"),
    ("finetune_base_benchmark.sh", {"NUM_WARMUP_EPOCHS": "-1"}, "NUM_WARMUP_EPOCHS"),
    ("inference.sh", {"BATCH_SIZE": "eight"}, "BATCH_SIZE"),
    ("inference.sh", {"AMP": "true", "BF16": "true"}, "BF16"),
    ("inference.sh", {"MAX_DURATION": "0"}, "MAX_DURATION"),
    ("inference.sh", {"TORCHSCRIPT_SAVE": "true"}, "TORCHSCRIPT_SAVE"),
    ("inference.sh", {"NUM_STEPS": "1.5"}, "NUM_STEPS"),
    ("inference.sh", {"MASK_PROB": "2"}, "MASK_PROB"),
    ("inference_benchmark.sh", {"NUM_REPEATS": "0"}, "NUM_REPEATS"),
    ("pretrain_large.sh", {"TF32": "on"}, "TF32"),
    ("finetune_vox_960h.sh", {"SAVE_INTERVAL_UPDATES": "-1"}, "SAVE_INTERVAL_UPDATES"),
]


BAD_IDS = [s + "-" + "-".join(f"{k}={v}" for k, v in e.items()) for s, e, _ in BAD]


@pytest.mark.parametrize("script,env,name", BAD, ids=BAD_IDS)
def test_bad_values_are_refused_before_launching(tmp_path, script, env, name):
    fake, marker = _fake_python(tmp_path)
    # a mistyped value is reported first, before the (here also missing) dataset and checkpoint files
    res = run(script, **{"DRY_RUN": "0", "PYTHON": fake, **env})
    assert res.returncode != 0
    assert "ERROR:" in res.stderr and name in res.stderr, res.stderr
    assert not command_lines(res), "nothing may be launched (or printed as launched)"
    assert not marker.exists()
    if "DRY_RUN" not in env:
        res = run(script, **env)
        assert res.returncode != 0 and name in res.stderr, res.stderr


def _fake_python(tmp_path, prelude: str = ""):
    """An interpreter that runs the shell lines ``prelude`` and records that it was started."""
    marker = tmp_path / "launched"
    fake = tmp_path / "fakepython"
    fake.write_text(f"#!/bin/sh\n{prelude}touch {marker}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return str(fake), marker


def _placeholder_subsets(tmp_path):
    """A dataset directory with train/valid filelists that only exist (for scripts that check the files)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "valid"):
        (data / f"{name}.tsv").write_text("/x\n")
    return data


@pytest.mark.parametrize("script,var", [("pretrain_base.sh", "DATASET_DIR"), ("finetune_base_10h.sh", "DATASET_DIR"),
                                        ("inference.sh", "DATASET_DIR"), ("inference_benchmark.sh", "DATASET_DIR")])
def test_missing_dataset_dir_is_an_error(tmp_path, script, var):
    fake, marker = _fake_python(tmp_path)
    res = run(script, DRY_RUN="0", PYTHON=fake, DATASET_DIR=str(tmp_path / "nope"))
    assert res.returncode == 2 and f"{var}=" in res.stderr and "not a directory" in res.stderr, res.stderr
    assert not marker.exists()
    # under DRY_RUN it is only a warning, so that the commands can be printed anywhere
    res = run(script, DATASET_DIR=str(tmp_path / "nope"))
    assert res.returncode == 0 and "WARNING" in res.stderr


def test_missing_subset_and_checkpoint_are_errors(tmp_path):
    fake, marker = _fake_python(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    res = run("pretrain_base.sh", DRY_RUN="0", PYTHON=fake, DATASET_DIR=str(data), OUTPUT_DIR=str(tmp_path / "o"))
    assert res.returncode == 2 and "TRAIN_SUBSET" in res.stderr and "train-full-960.tsv" in res.stderr
    for name in ("train", "valid"):
        (data / f"{name}.tsv").write_text("/x\n")
        (data / f"{name}.ltr").write_text("")
    res = run("finetune_base_10h.sh", DRY_RUN="0", PYTHON=fake, DATASET_DIR=str(data), TRAIN_SUBSET="train",
              VALID_SUBSET="valid", PRETRAINED_MODEL=str(tmp_path / "missing.pt"))
    assert res.returncode == 2 and "PRETRAINED_MODEL" in res.stderr and "not found" in res.stderr
    res = run("inference.sh", DRY_RUN="0", PYTHON=fake, DATASET_DIR=str(data), VALID_SUBSET="valid",
              FINETUNED_MODEL=str(tmp_path / "missing.pt"))
    assert res.returncode == 2 and "FINETUNED_MODEL" in res.stderr
    assert not marker.exists()


def test_valid_run_launches_and_creates_output_dir(tmp_path):
    fake, marker = _fake_python(tmp_path)
    data = _placeholder_subsets(tmp_path)
    out = tmp_path / "out"
    res = run("pretrain_base.sh", DRY_RUN="0", PYTHON=fake, DATASET_DIR=str(data), TRAIN_SUBSET="train",
              VALID_SUBSET="valid", OUTPUT_DIR=str(out), NUM_GPUS="1")
    assert res.returncode == 0, res.stderr
    assert marker.exists() and out.is_dir()
    assert len(command_lines(res)) == 1


def test_environment_of_the_training_run(tmp_path):
    """OMP_NUM_THREADS=1 and the cuDNN v8 switches are exported (GPU runs); a CPU run keeps its threads."""
    dump = tmp_path / "env.txt"
    fake, _ = _fake_python(tmp_path,
                           prelude=f'echo "omp=${{OMP_NUM_THREADS:-unset}} cudnn=$CUDNN_V8_API_ENABLED" > {dump}\n')
    data = _placeholder_subsets(tmp_path)
    common = dict(DRY_RUN="0", PYTHON=fake, DATASET_DIR=str(data), TRAIN_SUBSET="train", VALID_SUBSET="valid",
                  OUTPUT_DIR=str(tmp_path / "o"), NUM_GPUS="1")
    assert run("pretrain_base.sh", **common).returncode == 0
    assert dump.read_text().split() == ["omp=1", "cudnn=1"]
    assert run("pretrain_base.sh", CUDA_AVAILABLE="false", **common).returncode == 0
    assert dump.read_text().split() == ["omp=unset", "cudnn=1"]
    assert run("pretrain_base.sh", OMP_NUM_THREADS="3", **common).returncode == 0
    assert dump.read_text().split() == ["omp=3", "cudnn=1"]


def test_our_additional_variables():
    for script in ("pretrain_base.sh", "finetune_base_960h.sh"):
        check(flags(command(script, SAVE_INTERVAL_UPDATES="500", TF32="false")),
              {"--save_interval_updates": "500", "--tf32": "false"})
        check(flags(command(script)), {"--save_interval_updates": None, "--tf32": None})
    check(flags(command("inference.sh", TF32="true")), {"--tf32": "true"})


def test_common_helpers():
    lib = os.path.join(SCRIPTS, "lib", "common.sh")
    script = f"""
set -euo pipefail
source {shlex.quote(lib)}
A=08; require_int A 1 10
B=1e-4; require_float B pos
C=.5; require_prob C
quote_words plain "two words" "it's" '[2,(8,4),2]' ''
ARGS=(); X=true; bool_flag X --x --y; bool_flag X --x; printf '%s,' "${{ARGS[@]}}"; echo
"""
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    quoted, args = res.stdout.splitlines()
    assert shlex.split(quoted) == ["plain", "two words", "it's", "[2,(8,4),2]", ""]
    assert args == "--x,--y,"


@pytest.mark.parametrize("script", RECIPES + ["lib/common.sh", "docker/build.sh", "docker/run.sh"])
def test_scripts_parse_and_are_strict(script):
    path = os.path.join(SCRIPTS, script)
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    text = open(path).read()
    assert "eval " not in text
    if script != "lib/common.sh":
        assert "set -euo pipefail" in text
        assert os.access(path, os.X_OK), f"{script} is not executable"


# ---------------------------------------------------------------------------------------------------------------------
# fine-tuning
# ---------------------------------------------------------------------------------------------------------------------

FINETUNE_FIXED = {"--resume": True, "--labels": "ltr", "--adam_eps": "1e-8", "--lr_policy": "exp",
                  "--initial_lr_scale": "0.01", "--final_lr_scale": "0.05", "--apply_mask": True,
                  "--mask_channel_length": "64", "--activation_dropout": "0.1", "--feature_grad_mult": "0.0",
                  "--dropout_input": "0.0", "--dropout": "0.0", "--weight_decay": "0.0", "--mha": "pyt",
                  "--data": "/datasets/LibriSpeech", "--valid_subset": "dev-other", "--ema": "0.0", "--seed": "1",
                  "--save_frequency": "10", "--batch_size": None, "--no_save": None, "--epochs_this_job": None,
                  "--cudnn_benchmark": None, "--fp16": None, "--bf16": None, "--clip_norm": None,
                  "--cpu": None}

BIG = "results/pretrain_base/wav2vec2_update400000.pt"
# script: train_subset, output_dir, w2v_path, max_tokens, ncb, uf, lr, freeze, max_update, warmup, hold, mask,
#         mask_channel, layerdrop
FINETUNE_TABLE = {
    "finetune_vox_960h.sh": ("train-full-960", "results/finetune_large_960h", "pretrained_models/libri960_big.pt",
                             "1280000", "3", "1", "0.00003", "10000", "320000", "32000", "128000", "0.5", "0.25",
                             "0.1"),
    "finetune_base_960h.sh": ("train-full-960", "results/finetune_base_960h", BIG, "3200000", "1", "1", "0.0001", "0",
                              "320000", "32000", "128000", "0.5", "0.1", "0.1"),
    "finetune_base_100h.sh": ("train-clean-100", "results/finetune_base_100h", BIG, "3200000", "1", "1", "0.00003",
                              "0", "80000", "8000", "32000", "0.65", "0.5", "0.1"),
    "finetune_base_10h.sh": ("train-10h", "results/finetune_base_10h", BIG, "3200000", "1", "1", "0.00005", "10000",
                             "20000", "2000", "8000", "0.65", "0.5", "0.05"),
    "finetune_base_1h.sh": ("train-1h", "results/finetune_base_1h", BIG, "3200000", "1", "1", "0.00005", "10000",
                            "13000", "1300", "5200", "0.65", "0.25", "0.1"),
    "finetune_vox_100h.sh": ("train-clean-100", "results/finetune_large_100h", "pretrained_models/libri960_big.pt",
                             "1280000", "2", "1", "0.00003", "10000", "80000", "8000", "32000", "0.5", "0.5", "0.1"),
    # REFERENCE.md §7.2; OUTPUT_DIR is ours (the reference's wrapper leaves the engine's, shared with the 960h run)
    "finetune_vox_960h_cv.sh": ("train-full-960", "results/finetune_large_960h_cv",
                                "pretrained_models/libri960_big.pt", "1280000", "3", "1", "0.00002", "0", "80000",
                                "8000", "32000", "0.25", "0.5", "0.1"),
}


@pytest.mark.parametrize("script", sorted(FINETUNE_TABLE))
def test_finetune_recipes(script):
    (subset, out, w2v, mt, ncb, uf, lr, freeze, mu, warm, hold, mask, maskch, ld) = FINETUNE_TABLE[script]
    cmd = command(script)
    assert launcher(cmd)[1:] == ["--nproc_per_node=8", "train.py"] and cmd[len(launcher(cmd))] == "finetune"
    check(flags(cmd), {
        "--train_subset": subset, "--output_dir": out, "--w2v_path": w2v, "--max_tokens": mt,
        "--max_tokens_valid": mt, "--num_concat_batches": ncb, "--update_freq": uf, "--lr": lr,
        "--freeze_finetune_updates": freeze, "--max_update": mu, "--warmup_updates": warm, "--hold_updates": hold,
        "--mask_prob": mask, "--mask_channel_prob": maskch, "--encoder_layerdrop": ld, **FINETUNE_FIXED,
    })


def test_finetune_variables():
    f = flags(command("finetune_base_960h.sh", MAX_UPDATE="1000", BATCH_SIZE="16", SEED="3", NO_SAVE="true",
                      EPOCHS_THIS_JOB="2", SAVE_FREQUENCY="1", PRETRAINED_MODEL="my.pt", CUDNN_BENCHMARK="true"))
    check(f, {"--max_update": "1000", "--warmup_updates": "100", "--hold_updates": "400", "--batch_size": "16",
              "--seed": "3", "--no_save": True, "--epochs_this_job": "2", "--save_frequency": "1",
              "--w2v_path": "my.pt", "--cudnn_benchmark": True})
    f = flags(command("finetune_base_100h.sh", MAX_UPDATE="1000", WARMUP_UPDATES="7", HOLD_UPDATES="9"))
    check(f, {"--warmup_updates": "7", "--hold_updates": "9"})
    # finetune_base_10h.sh: the reference's LAYERDROP is honoured (as an alias); ENCODER_LAYERDROP wins
    check(flags(command("finetune_base_10h.sh", LAYERDROP="0.2")), {"--encoder_layerdrop": "0.2"})
    check(flags(command("finetune_base_10h.sh", LAYERDROP="0.2", ENCODER_LAYERDROP="0.3")),
          {"--encoder_layerdrop": "0.3"})


# ---------------------------------------------------------------------------------------------------------------------
# benchmarks
# ---------------------------------------------------------------------------------------------------------------------


def _summary_command(res):
    return [c for c in command_lines(res) if "common.benchmark_summary" in c]


@pytest.mark.parametrize("prec_env,prec", [({}, "fp32"), ({"FP16": "true"}, "fp16"), ({"BF16": "true"}, "bf16")])
def test_pretrain_benchmark(prec_env, prec):
    res = run("pretrain_base_benchmark.sh", **prec_env)
    assert res.returncode == 0, res.stderr
    cmd = command("pretrain_base_benchmark.sh", **prec_env)
    out = f"results/pretrain_base_benchmark_8x1400000x8x1_{prec}"
    check(flags(cmd), {"--output_dir": out, "--train_subset": "train-full-960", "--no_save": True,
                       "--epochs_this_job": "7", "--benchmark_epochs_num": "5", "--max_tokens": "1400000",
                       "--num_concat_batches": "8", "--update_freq": "1", "--hourglass_transformer": "[2,(8,4),2]"})
    assert launcher(cmd)[1:] == ["--nproc_per_node=8", "train.py"]
    (summary,) = _summary_command(res)
    assert summary[-3:] == [f"{out}/nvlog.json", "--output", f"{out}/benchmark_summary.json"]


def test_pretrain_benchmark_variables():
    cmd = command("pretrain_base_benchmark.sh", NUM_EPOCHS="3", NUM_WARMUP_EPOCHS="1", NUM_GPUS="4",
                  MAX_TOKENS="1000", NUM_CONCAT_BATCHES="2", UPDATE_FREQ="4", NO_SAVE="false", EPOCHS_THIS_JOB="99")
    check(flags(cmd), {"--output_dir": "results/pretrain_base_benchmark_4x1000x2x4_fp32", "--epochs_this_job": "4",
                       "--benchmark_epochs_num": "3", "--no_save": True})


def test_finetune_benchmark():
    res = run("finetune_base_benchmark.sh", BF16="true")
    assert res.returncode == 0, res.stderr
    cmd = command("finetune_base_benchmark.sh", BF16="true")
    out = "results/finetune_base_benchmark_8x3200000x1x1_bf16"
    check(flags(cmd), {"--output_dir": out, "--w2v_path": BIG, "--train_subset": "train-full-960",
                       "--no_save": True, "--epochs_this_job": "7", "--benchmark_epochs_num": "5",
                       "--max_tokens": "3200000", "--lr": "0.0001", "--bf16": True})
    assert _summary_command(res)[0][-1] == f"{out}/benchmark_summary.json"


# ---------------------------------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------------------------------


def test_inference_defaults():
    cmd = command("inference.sh")
    assert launcher(cmd) == ["python3", "inference.py"]
    check(flags(cmd), {
        "--w2v_path": "results/finetune_base_960h/wav2vec2_update320000.pt", "--data": "/datasets/LibriSpeech",
        "--valid_subset": "test-other", "--output_dir": "results/inference", "--batch_size": "8", "--seed": "1",
        "--ema": "0.0", "--steps": "0", "--warmup_steps": "0", "--log_file": "results/inference/nvlog.json",
        "--save_predictions": "results/inference/test-other.predictions", "--save_logits": None,
        "--skip_invalid_size_inputs_valid_test": True, "--mask_prob": "0.5", "--mask_channel_prob": "0.25",
        "--apply_mask": True, "--mask_channel_length": "64", "--encoder_layerdrop": "0.1",
        "--activation_dropout": "0.1", "--feature_grad_mult": "0.0", "--fp16": None, "--bf16": None, "--amp": None,
        "--max_duration": None, "--torchscript": None, "--torch_compile": None, "--use_ema": None, "--cpu": None,
        "--cuda_graphs": None,
    })
    assert "--batch_size=8" in cmd  # the reference's spelling


def test_inference_variables():
    f = flags(command("inference.sh", FP16="true", MAX_DURATION="30", LOGITS_FILE="l.pt", PREDICTION_FILE="p.txt",
                      TORCHSCRIPT="true", TORCH_COMPILE="true", USE_EMA="true", NUM_STEPS="20",
                      NUM_WARMUP_STEPS="5", BATCH_SIZE="2", SEED="4", LOG_FILE="x.json", VALID_SUBSET="dev-clean"))
    check(f, {"--fp16": True, "--amp": None, "--max_duration": "30", "--save_logits": "l.pt",
              "--save_predictions": "p.txt", "--torchscript": True, "--torch_compile": True, "--use_ema": True,
              "--steps": "20", "--warmup_steps": "5", "--batch_size": "2", "--seed": "4", "--log_file": "x.json",
              "--valid_subset": "dev-clean"})
    check(flags(command("inference.sh", AMP="true")), {"--amp": True, "--fp16": True})
    check(flags(command("inference.sh", CUDA_GRAPHS="true")), {"--cuda_graphs": True, "--torch_compile": None})
    check(flags(command("inference.sh", BF16="true")), {"--bf16": True, "--fp16": None})
    check(flags(command("inference.sh", CHUNK_SECONDS="30", CHUNK_OVERLAP_SECONDS="4")),
          {"--chunk_seconds": "30", "--chunk_overlap_seconds": "4"})
    check(flags(command("inference.sh")), {"--chunk_seconds": None, "--chunk_overlap_seconds": None})
    check(flags(command("inference.sh", PREDICTION_FILE="")), {"--save_predictions": None})
    check(flags(command("inference.sh", OUTPUT_DIR="o", VALID_SUBSET="dev-clean")),
          {"--save_predictions": "o/dev-clean.predictions", "--log_file": "o/nvlog.json"})


def test_inference_benchmark(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "test-other.ltr").write_text("A |\n" * 10)
    (data / "test-other.tsv").write_text("/x\n")
    res = run("inference_benchmark.sh", DATASET_DIR=str(data), BATCH_SIZE="4", BF16="true")
    assert res.returncode == 0, res.stderr
    cmd = [c for c in command_lines(res) if "inference.py" in c][0]
    out = "results/base_inference_benchmark_bs4_bf16"
    # 10 utterances / 4 -> 3 batches; 10 measured passes, 2 warm-up passes
    check(flags(cmd), {"--steps": "30", "--warmup_steps": "6", "--batch_size": "4", "--output_dir": out,
                       "--valid_subset": "test-other", "--bf16": True, "--save_predictions": None})
    assert _summary_command(res)[0][-1] == f"{out}/benchmark_summary.json"
    res = run("inference_benchmark.sh", DATASET_DIR=str(data), NUM_REPEATS="1", NUM_WARMUP_REPEATS="0")
    cmd = [c for c in command_lines(res) if "inference.py" in c][0]
    check(flags(cmd), {"--steps": "10", "--warmup_steps": "0", "--batch_size": "1",
                       "--output_dir": "results/base_inference_benchmark_bs1_fp32"})


# ---------------------------------------------------------------------------------------------------------------------
# Docker helpers
# ---------------------------------------------------------------------------------------------------------------------


def _fake_docker(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.args"
    fake = bindir / "docker"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {log}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return str(bindir), log


def test_docker_build_and_run(tmp_path):
    bindir, log = _fake_docker(tmp_path)
    env = _env(PATH=bindir + os.pathsep + os.environ["PATH"])
    res = subprocess.run(["bash", os.path.join(SCRIPTS, "docker", "build.sh")], env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert log.read_text().split("\n")[:5] == ["build", ROOT, "--rm", "-t", "wav2vec2"]
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    env["DATASET_DIR"] = str(datasets)
    res = subprocess.run(["bash", os.path.join(SCRIPTS, "docker", "run.sh")], env=env, capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    args = log.read_text().splitlines()
    assert args[0] == "run" and "--gpus" in args and "--ipc=host" in args
    assert args[1] == "-i"  # no terminal (a batch job): docker refuses -t there ("the input device is not a TTY")
    assert f"{datasets}:/datasets" in args and f"{ROOT}:/workspace/wav2vec2" in args
    assert "PYTHON=python" in args  # the image's interpreter, not a host .venv in the mounted checkout
    assert args[-2:] == ["wav2vec2:latest", "bash"]
    env["DATASET_DIR"] = str(tmp_path / "none")
    res = subprocess.run(["bash", os.path.join(SCRIPTS, "docker", "run.sh")], env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2 and "DATASET_DIR" in res.stderr


def test_dockerfile():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    assert "ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:" in text and "FROM ${FROM_IMAGE_NAME}" in text
    assert "git+https://github.com/NVIDIA/dllogger@v1.0.0#egg=dllogger" in text
    assert "WORKDIR /workspace/wav2vec2" in text and "pip install --no-cache-dir --no-deps -e ." in text
    assert "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=0" in text  # --tf32 false must mean FP32 inside the NGC image
    ignore = open(os.path.join(ROOT, ".dockerignore")).read().split()
    for entry in ("datasets/", "results/", "models/", "pretrained_models/", "tb_*/", "*.pt", ".venv/"):
        assert entry in ignore



def _dockerfile_run_step(marker):
    """The shell command of the Dockerfile's RUN instruction that mentions ``marker`` (continuation lines joined)."""
    text = open(os.path.join(ROOT, "Dockerfile")).read().replace("\\\n", " ")
    runs = [line[len("RUN "):] for line in text.splitlines() if line.startswith("RUN ") and marker in line]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("base_has_apex", [True, False])
def test_dockerfile_keeps_the_images_apex_or_builds_nvidias(tmp_path, base_has_apex):
    """The image's NVIDIA apex (FusedAdam + its CUDA extension amp_C) is kept; without it, apex is built from NVIDIA's
    repository with the C++/CUDA extensions and checked. Runs the RUN step's shell with logging fake pip/python."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    state = tmp_path / "apex_installed"
    if base_has_apex:
        state.write_text("")
    (bindir / "pip").write_text(f"""#!/bin/sh
echo "pip $*" >> {log}
case "$*" in *NVIDIA/apex*) touch {state};; esac
""")
    (bindir / "python").write_text(f"""#!/bin/sh
echo "python $*" >> {log}
case "$*" in *amp_C*) test -e {state};; *) exit 0;; esac
""")
    for tool in ("pip", "python"):
        os.chmod(bindir / tool, 0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", APEX_REF="master")
    res = subprocess.run(["sh", "-c", _dockerfile_run_step("apex")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    apex_builds = [c for c in calls if c.startswith("pip") and "NVIDIA/apex" in c]
    assert any("NVIDIA/dllogger@v1.0.0" in c for c in calls)
    if base_has_apex:
        assert apex_builds == [] and "from the base image" in res.stdout
    else:
        assert len(apex_builds) == 1
        assert "--no-build-isolation" in apex_builds[0] and "git+https://github.com/NVIDIA/apex@master" in apex_builds[0]
        assert "--build-option=--cpp_ext" in apex_builds[0] and "--build-option=--cuda_ext" in apex_builds[0]
        assert calls[-1].startswith("python") and "amp_C" in calls[-1]  # the build is checked

# ---------------------------------------------------------------------------------------------------------------------
# end to end on CPU (slow): pretrain -> fine-tune -> infer, and the benchmark summaries
# ---------------------------------------------------------------------------------------------------------------------

#: architecture on top of PRESET=tiny that makes a CPU update take a fraction of a second
MICRO = ["--conv_feature_layers", "[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2", "--encoder_layers", "2",
         "--encoder_embed_dim", "32", "--encoder_ffn_embed_dim", "64", "--encoder_attention_heads", "2",
         "--conv_pos", "8", "--conv_pos_groups", "4", "--final_dim", "16", "--latent_vars", "8",
         "--num_negatives", "10", "--mask_length", "4"]
RUNTIME = ["--num_workers", "0", "--required_batch_size_multiple", "1", "--log_frequency", "1"]


def _need_entry_points(*names):
    missing = [n for n in names if not os.path.isfile(os.path.join(ROOT, n))]
    if missing:
        pytest.skip(f"{', '.join(missing)} not written yet: the end-to-end script runs need the entry points")


def _real(script, *args, **env):
    env = _env(DRY_RUN="0", CUDA_AVAILABLE="false", PYTHON=sys.executable, OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
               **env)
    res = subprocess.run(["bash", os.path.join(SCRIPTS, script), *args], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=900)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


def _corpus_env(corpus):
    return dict(DATASET_DIR=corpus, TRAIN_SUBSET="train", VALID_SUBSET="valid", MAX_TOKENS="60000",
                MIN_SAMPLE_SIZE="8000", NUM_CONCAT_BATCHES="1")


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """pretrain_base.sh (PRESET=tiny, 3 updates) then finetune_base_10h.sh from it (3 updates), really run on CPU."""
    _need_entry_points("train.py")
    root = tmp_path_factory.mktemp("scripts_e2e")
    pre = str(root / "pretrain")
    res = _real("pretrain_base.sh", *MICRO, *RUNTIME, PRESET="tiny", OUTPUT_DIR=pre, MAX_UPDATE="3",
                WARMUP_UPDATES="1", **_corpus_env(tiny_corpus))
    assert "--preset tiny" in res.stdout and "--cpu" in res.stdout
    ckpt = os.path.join(pre, "wav2vec2_update3.pt")
    assert os.path.isfile(ckpt), os.listdir(pre)
    ft = str(root / "finetune")
    _real("finetune_base_10h.sh", "--mask_channel_length", "4", "--mask_length", "4", *RUNTIME,
          PRETRAINED_MODEL=ckpt, OUTPUT_DIR=ft, MAX_UPDATE="3", FREEZE_FINETUNE_UPDATES="1", SAVE_FREQUENCY="1",
          **_corpus_env(tiny_corpus))
    ft_ckpt = os.path.join(ft, "wav2vec2_update3.pt")
    assert os.path.isfile(ft_ckpt), os.listdir(ft)
    with open(os.path.join(ft, "nvlog.json")) as f:
        assert '"val_wer"' in f.read()
    return {"root": root, "pretrained": ckpt, "finetuned": ft_ckpt}


@pytest.mark.slow
def test_end_to_end_pretrain_then_finetune(trained):
    """The fine-tuning recipe really started from the pretraining recipe's checkpoint: its extractor (frozen by the
    recipe, feature_grad_mult 0) holds the pretrained weights exactly, and its transformer moved away from them."""
    import torch

    pre = torch.load(trained["pretrained"], weights_only=True)["model"]
    ft = torch.load(trained["finetuned"], weights_only=True)["model"]
    prefix = "w2v_encoder.w2v_model."
    extractor = [k for k in pre if k.startswith("feature_extractor.")]
    assert extractor and all(torch.equal(ft[prefix + k], pre[k]) for k in extractor)
    encoder = [k for k in pre if k.startswith("encoder.layers.") and k.endswith("fc1.weight")]
    assert encoder and any(not torch.equal(ft[prefix + k], pre[k]) for k in encoder)


@pytest.mark.slow
def test_end_to_end_pretrain_benchmark_summary(tiny_corpus, tmp_path):
    _need_entry_points("train.py")
    bench = str(tmp_path / "pt_bench")
    _real("pretrain_base_benchmark.sh", *MICRO, *RUNTIME, PRESET="tiny", OUTPUT_DIR=bench, NUM_EPOCHS="1",
          NUM_WARMUP_EPOCHS="1", WARMUP_UPDATES="1", **_corpus_env(tiny_corpus))
    with open(os.path.join(bench, "benchmark_summary.json")) as f:
        summary = json.load(f)
    assert any(k.startswith("train_avg_") for k in summary), summary
    assert not any(n.endswith(".pt") for n in os.listdir(bench))  # NO_SAVE


@pytest.mark.slow
def test_end_to_end_inference_and_benchmark(trained, tiny_corpus):
    _need_entry_points("inference.py")
    inf = str(trained["root"] / "inference")
    _real("inference.sh", "--num_workers", "0", FINETUNED_MODEL=trained["finetuned"], OUTPUT_DIR=inf,
          DATASET_DIR=tiny_corpus, VALID_SUBSET="valid", BATCH_SIZE="4")
    assert os.path.isfile(os.path.join(inf, "valid.predictions"))
    assert os.path.isfile(os.path.join(inf, "nvlog.json"))
    ib = str(trained["root"] / "inf_bench")
    _real("inference_benchmark.sh", "--num_workers", "0", FINETUNED_MODEL=trained["finetuned"], OUTPUT_DIR=ib,
          DATASET_DIR=tiny_corpus, VALID_SUBSET="valid", BATCH_SIZE="4", NUM_REPEATS="1", NUM_WARMUP_REPEATS="1")
    with open(os.path.join(ib, "benchmark_summary.json")) as f:
        assert json.load(f)


@pytest.mark.slow
def test_gpu_suite_runs_every_step_on_cpu(tmp_path):
    """benchmarks/gpu_suite.sh (the one prepared run for a lent GPU) works end to end: QUICK=1 DEVICE=cpu runs the
    same steps on the tiny preset; every benchmark reports its ratio and the inference rows land in infer.json."""
    out = tmp_path / "suite"
    env = dict(os.environ, QUICK="1", DEVICE="cpu", OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["env.txt", "infer.json", "suite.log", "tests.log"]
    log = (out / "suite.log").read_text()
    assert log.count("ratio (ours throughput / HF throughput)") == 4
    assert "same-model check: CTC loss" in log and "0 step(s) failed" in log and "FFT relative error" in log
    assert "passed" in (out / "tests.log").read_text()
    rows = json.loads((out / "infer.json").read_text())
    assert rows[0]["preset"] == "tiny" and rows[0]["ours_median_ms"] > 0 and "ours_bf16_over_hf" in rows[0]
    assert "torch" in (out / "env.txt").read_text()


def test_preset_switches_cannot_be_turned_off_and_say_so():
    """With PRESET=large, NORMALIZE=false cannot remove what the preset switches on (--normalize is a switch): the
    script says so instead of ignoring the variable; without PRESET the variable decides."""
    res = run("pretrain_large.sh", PRESET="large", NORMALIZE="false", CONV_BIAS="false")
    assert res.returncode == 0
    assert "NORMALIZE=false has no effect with PRESET=large" in res.stderr
    assert "CONV_BIAS=false has no effect" in res.stderr and "LAYER_NORM_FIRST" not in res.stderr
    res = run("pretrain_large.sh", NORMALIZE="false")
    assert "has no effect" not in res.stderr and "--normalize" not in flags(command_lines(res)[-1])
