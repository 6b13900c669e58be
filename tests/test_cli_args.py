"""Command-line compatibility with the reference (REFERENCE.md §8): every reference flag parses on the entry points
that have it, with the reference's default; unimplemented features are refused with an error naming the flag.

The tables below are the oracle: flag -> the reference's default, copied by hand from REFERENCE.md §8.1-8.4 (not
derived from our parsers). Conventions: ``OFF`` is a reference switch (``store_true``, default False, given bare);
``None`` has no command-line form; lists are nargs flags; True/False values are the reference's ``type=bool`` flags.
"""

from __future__ import annotations

import pytest

import inference
import train
from wav2vec2.args import config_from_args


class _Switch:
    def __repr__(self) -> str:
        return "OFF"


OFF = _Switch()

# §8.1 common flags (train.py pretrain, train.py finetune, inference.py); --output_dir is required
COMMON = {
    "--epochs_this_job": 0, "--cudnn_benchmark": OFF, "--local_rank": 0, "--optimizer": "adam", "--ema": 0.0,
    "--log_frequency": 1, "--log_file": None, "--benchmark_epochs_num": 3, "--no_save": OFF, "--resume": OFF,
    "--ckpt": None, "--save_frequency": 10, "--keep_milestones": [100, 200, 300, 400], "--seed": 1, "--cpu": OFF,
    "--amp": OFF, "--fp16": OFF, "--bf16": OFF, "--min_loss_scale": 0.0001, "--fp16_init_scale": 128,
    "--fp32_transformer_layernorm": OFF, "--fp32_mha_softmax": OFF, "--fp32_cosine_sim": OFF, "--fp32_pos_conv": OFF,
    "--fp32_conv_norms": OFF, "--mha": "fairseq", "--num_concat_batches": 1, "--num_workers": 6,
    "--skip_invalid_size_inputs_valid_test": OFF, "--max_tokens": 1400000, "--max_tokens_valid": 1400000,
    "--required_batch_size_multiple": 8, "--required_seq_len_multiple": 2, "--train_subset": "train",
    "--valid_subset": "valid", "--batch_size": None, "--batch_size_valid": None,
    "--data": "/workspace/fairseq/librispeech", "--sample_rate": 16000, "--enable_padding": OFF,
    "--min_sample_size": None, "--max_sample_size": None, "--num_batch_buckets": 0, "--max_update": 400000,
    "--update_freq": [64], "--lr": [0.0005], "--adam_betas": [0.9, 0.98], "--adam_eps": 1e-06,
    "--weight_decay": 0.01, "--clip_norm": 0.0, "--lr_policy": "poly", "--warmup_updates": 32000,
    "--hold_updates": 0, "--initial_lr_scale": 0.0, "--final_lr_scale": 0.0, "--lr_poly_power": 1.0,
    "--lr_exp_decay": None, "--dropout": 0.1, "--attention_dropout": 0.0, "--activation_dropout": 0.0,
    "--dropout_input": 0.1, "--dropout_features": 0.1, "--apply_mask": OFF, "--mask_length": 10, "--mask_prob": 0.5,
    "--require_same_masks": True, "--mask_selection": "static", "--mask_other": 0, "--no_mask_overlap": False,
    "--mask_min_space": 1, "--mask_channel_length": 10, "--mask_channel_prob": 0.0, "--mask_channel_before": False,
    "--mask_channel_selection": "static", "--mask_channel_other": 0, "--no_mask_channel_overlap": False,
    "--mask_channel_min_space": 1, "--feature_grad_mult": 0.1, "--encoder_layerdrop": 0.05, "--mask_dropout": 0.0,
}

# §8.2 fine-tuning flags (train.py finetune, inference.py)
FINETUNING = {
    "--final_dropout": 0.0, "--w2v_path": None, "--blank_weight": 0, "--blank_mode": "add", "--labels": "ltr",
    "--freeze_finetune_updates": 0,
}

# §8.3 pretraining flags (train.py pretrain only)
PRETRAINING = {
    "--extractor_mode": "default", "--encoder_layers": 12, "--encoder_embed_dim": 768,
    "--encoder_ffn_embed_dim": 3072, "--encoder_attention_heads": 12, "--activation_fn": "gelu", "--final_dim": 256,
    "--layer_norm_first": OFF, "--conv_feature_layers": "[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]+[(512,2,2)]",
    "--conv_bias": OFF, "--logit_temp": 0.1, "--quantize_targets": OFF, "--quantize_input": OFF, "--target_glu": OFF,
    "--quantizer_depth": 1, "--quantizer_factor": 3, "--latent_vars": 320, "--latent_groups": 2, "--latent_dim": 0,
    "--num_negatives": 100, "--negatives_from_everywhere": OFF, "--cross_sample_negatives": 0,
    "--codebook_negatives": 0, "--conv_pos": 128, "--conv_pos_groups": 16, "--latent_temp": [2.0, 0.5, 0.999995],
    "--normalize": OFF, "--log_keys": ["prob_perplexity", "code_perplexity", "temp"], "--infonce": OFF,
    "--loss_weights": [0.1, 10.0], "--use_spectrogram_features": OFF, "--rotary_embeddings": OFF,
    "--hourglass_transformer": None, "--hourglass_resample": "naive", "--spectrogram_feature_stacking": 1,
    "--spectrogram_feature_subsampling": 1, "--spectrogram_window_size": 0.02, "--spectrogram_window_stride": 0.01,
    "--spectrogram_n_filt": 80,
}

# §8.4 inference-only flags
INFERENCE = {
    "--steps": 0, "--warmup_steps": 0, "--labels_path": None, "--save_predictions": None, "--save_logits": None,
    "--transcribe_wav": None, "--transcribe_filelist": None, "--torchscript": OFF, "--w2v_path_for_args": None,
}

ENTRY_POINTS = {
    "pretrain": {**COMMON, **PRETRAINING},
    "finetune": {**COMMON, **FINETUNING},
    "inference": {**COMMON, **FINETUNING, **INFERENCE},
}

# Documented departures (docs/DEVIATIONS.md): the reference's switch is off by default, and its "off" crashes
# (REFERENCE.md §9.1 #22); ours is on by default and the bare switch of the recipes still parses.
DEVIATING_DEFAULTS = {"--quantize_targets": True, "--infonce": True}

# Reference switches whose feature we do not implement: given bare, they are refused.
REFUSED_SWITCHES = {"--quantize_input", "--negatives_from_everywhere", "--use_spectrogram_features",
                    "--rotary_embeddings"}


def _parser(entry: str):
    return inference.build_parser() if entry == "inference" else train.build_parser(entry)


def _prefix(entry: str) -> list[str]:
    return [] if entry == "inference" else [entry]


def _words(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _dest(flag: str) -> str:
    return flag[2:]


@pytest.fixture(autouse=True)
def _no_local_rank(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)  # its default comes from the environment


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_defaults_equal_the_reference(entry):
    """Nothing but the required --output_dir given: every flag holds the reference's default."""
    args = _parser(entry).parse_args(_prefix(entry) + ["--output_dir", "out"])
    for flag, ref in ENTRY_POINTS[entry].items():
        got = getattr(args, _dest(flag))
        if flag in DEVIATING_DEFAULTS:
            assert ref is OFF and got == DEVIATING_DEFAULTS[flag], flag
        elif ref is OFF:
            assert got is False, flag
        else:
            assert got == ref, (flag, got, ref)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_valued_flag_parses_its_reference_default(entry):
    """One command line that spells out every valued flag at the reference's default (as a script would)."""
    argv = _prefix(entry) + ["--output_dir", "out"]
    valued = {f: v for f, v in ENTRY_POINTS[entry].items() if v is not OFF and v is not None}
    for flag, value in valued.items():
        argv += [flag, *_words(value)]
    args = _parser(entry).parse_args(argv)
    for flag, value in valued.items():
        assert getattr(args, _dest(flag)) == value, flag


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_switch_parses_bare(entry):
    switches = [f for f, v in ENTRY_POINTS[entry].items() if v is OFF and f not in REFUSED_SWITCHES]
    args = _parser(entry).parse_args(_prefix(entry) + ["--output_dir", "out", *switches])
    for flag in switches:
        assert getattr(args, _dest(flag)) is True, flag


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_the_tables_are_complete_and_output_dir_is_required(entry, capsys):
    """REFERENCE.md §8 lists 81 common flags (80 here plus the required --output_dir), 6 fine-tuning, 39 pretraining
    and 9 inference-only flags: a guard against an entry lost while editing the tables. inference.py leaves
    --output_dir to its run (transcribing needs none) and refuses a corpus evaluation without it."""
    assert (len(COMMON), len(FINETUNING), len(PRETRAINING), len(INFERENCE)) == (80, 6, 39, 9)
    if entry == "inference":
        assert inference.main(_prefix(entry)) == 2
    else:
        with pytest.raises(SystemExit):
            _parser(entry).parse_args(_prefix(entry))
    assert "--output_dir" in capsys.readouterr().err


def test_local_rank_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert train.build_parser("pretrain").parse_args(["pretrain", "--output_dir", "o"]).local_rank == 3
    args = train.build_parser("pretrain").parse_args(["pretrain", "--output_dir", "o", "--local-rank", "1"])
    assert args.local_rank == 1


@pytest.mark.parametrize("words", [
    ["--quantize_input"],
    ["--quantize_input", "true"],
    ["--negatives_from_everywhere"],
    ["--codebook_negatives", "10"],
    ["--use_spectrogram_features"],
    ["--rotary_embeddings"],
    ["--infonce", "false"],
])
def test_unimplemented_values_are_refused_naming_the_flag(words, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["pretrain", "--output_dir", "out", *words])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {words[0]}" in err and "is not supported" in err and "docs/DEVIATIONS.md" in err


@pytest.mark.parametrize("words, dest, value", [
    (["--quantize_input", "false"], "quantize_input", False),
    (["--codebook_negatives", "0"], "codebook_negatives", 0),
    (["--rotary_embeddings", "no"], "rotary_embeddings", False),
    (["--infonce", "true"], "infonce", True),
    # the spectrogram parameters are read only by the (refused) spectrogram front-end: any value, no effect
    (["--spectrogram_n_filt", "64"], "spectrogram_n_filt", 64),
    (["--spectrogram_window_size", "0.025"], "spectrogram_window_size", 0.025),
    (["--spectrogram_feature_stacking", "3"], "spectrogram_feature_stacking", 3),
])
def test_supported_values_of_the_compatibility_flags(words, dest, value):
    args = train.parse_args(["pretrain", "--output_dir", "out", *words])
    assert getattr(args, dest) == value


def test_unimplemented_flags_are_pretraining_only_as_in_the_reference():
    for entry in ("finetune", "inference"):
        with pytest.raises(SystemExit):
            _parser(entry).parse_args(_prefix(entry) + ["--output_dir", "out", "--codebook_negatives", "0"])


def test_mha_values_build_the_same_model_config():
    a = train.parse_args(["pretrain", "--output_dir", "out", "--mha", "fairseq"])
    b = train.parse_args(["pretrain", "--output_dir", "out", "--mha", "pyt"])
    assert (a.mha, b.mha) == ("fairseq", "pyt")
    assert config_from_args(a) == config_from_args(b)


def test_reference_recipe_command_lines_parse():
    """pretrain_base.sh and finetune_base_960h.sh as the reference runs them (REFERENCE.md §7.1, §7.2), BF16."""
    pretrain = [
        "pretrain", "--data", "/datasets/LibriSpeech", "--train_subset", "train-full-960", "--valid_subset",
        "dev-other", "--output_dir", "results/pretrain_base", "--max_tokens", "1400000", "--max_tokens_valid",
        "1400000", "--num_concat_batches", "8", "--update_freq", "1", "--min_sample_size", "32000",
        "--max_sample_size", "250000", "--max_update", "400000", "--warmup_updates", "32000", "--optimizer", "adam",
        "--lr", "0.0005", "--loss_weights", "0.1", "10.0", "--bf16", "--fp32_pos_conv", "--ema", "0.0",
        "--mask_prob", "0.65", "--extractor_mode", "default", "--final_dim", "256", "--latent_temp", "2.0", "0.5",
        "0.999995", "--encoder_layerdrop", "0.05", "--dropout_input", "0.1", "--dropout_features", "0.1",
        "--dropout", "0.1", "--attention_dropout", "0.1", "--encoder_layers", "12", "--encoder_embed_dim", "768",
        "--encoder_ffn_embed_dim", "3072", "--encoder_attention_heads", "12", "--feature_grad_mult", "0.1",
        "--hourglass_transformer", "[2,(8,4),2]", "--save_frequency", "1", "--resume", "--clip_norm", "25",
        "--weight_decay", "0.01", "--lr_policy", "poly", "--lr_poly_power", "1.0",
        "--skip_invalid_size_inputs_valid_test", "--infonce", "--quantize_targets", "--mha", "pyt",
    ]
    args = train.parse_args(pretrain)
    assert args.infonce is True and args.quantize_targets is True and args.mha == "pyt" and args.lr == 0.0005
    finetune = [
        "finetune", "--data", "/datasets/LibriSpeech", "--train_subset", "train-full-960", "--valid_subset",
        "dev-other", "--output_dir", "results/finetune_base_960h", "--max_tokens", "3200000", "--max_tokens_valid",
        "3200000", "--num_concat_batches", "1", "--update_freq", "1", "--max_update", "320000", "--warmup_updates",
        "32000", "--hold_updates", "128000", "--freeze_finetune_updates", "0", "--lr", "0.0001", "--ema", "0.0",
        "--seed", "1", "--w2v_path", "results/pretrain_base/wav2vec2_update400000.pt", "--mask_prob", "0.5",
        "--mask_channel_prob", "0.1", "--encoder_layerdrop", "0.1", "--save_frequency", "10", "--resume",
        "--labels", "ltr", "--adam_eps", "1e-8", "--lr_policy", "exp", "--initial_lr_scale", "0.01",
        "--final_lr_scale", "0.05", "--apply_mask", "--mask_channel_length", "64", "--activation_dropout", "0.1",
        "--feature_grad_mult", "0.0", "--dropout_input", "0.0", "--dropout", "0.0", "--weight_decay", "0.0",
        "--mha", "pyt",
    ]
    args = train.parse_args(finetune)
    assert args.lr_policy == "exp" and args.apply_mask is True and args.mask_channel_length == 64


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_our_own_flags_are_marked_in_the_help(entry):
    """README: ``-h`` documents the reference's flags under their names and marks ours. Oracle: the tables above
    (REFERENCE.md §8): every other flag says "(ours)" in its help text or its group's title."""
    parser = _parser(entry)
    titles = {id(a): g.title or "" for g in parser._action_groups for a in g._group_actions}
    unmarked = []
    for action in parser._actions:
        names = [o for o in action.option_strings if o.startswith("--")]
        if not names or set(names) & (set(ENTRY_POINTS[entry]) | {"--output_dir", "--help", "--local-rank"}):
            continue
        if "(ours)" not in (action.help or "") and "(ours)" not in titles[id(action)]:
            unmarked.append(names[0])
    assert unmarked == []


def test_exp_schedule_without_a_final_scale_is_refused_at_parse_time(capsys):
    """--lr_policy exp decays to --final_lr_scale x lr; with the default 0 it has no decay rate: one error line
    before the model and the data are built (it was a traceback from the scheduler)."""
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["pretrain", "--output_dir", "out", "--lr_policy", "exp"])
    assert exc.value.code == 2
    assert "--final_lr_scale" in capsys.readouterr().err
    assert train.parse_args(["pretrain", "--output_dir", "out", "--lr_policy", "exp", "--final_lr_scale", "0.05"])
    assert train.parse_args(["pretrain", "--output_dir", "out", "--lr_policy", "exp", "--lr_exp_decay", "0.999"])


def test_preset_large_takes_the_large_recipes_loss_weights():
    """pretrain_large.sh trains with --loss_weights 0.1 0.0 (no feature penalty; the extractor gets its full
    gradient): --preset large gives that too; the others keep the reference's 0.1 10.0; the flag still wins."""
    import train

    base = ["pretrain", "--data", "d", "--output_dir", "o"]
    assert train.parse_args([*base, "--preset", "large"]).loss_weights == [0.1, 0.0]
    assert train.parse_args([*base, "--preset", "base"]).loss_weights == [0.1, 10.0]
    assert train.parse_args([*base, "--preset", "large", "--loss_weights", "0.2", "5"]).loss_weights == [0.2, 5.0]
