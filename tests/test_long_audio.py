"""Chunked inference of long audio (common/chunking.py, common.evaluation.chunked_forward, inference.py flags).

The main oracle is a LOCAL model: the tiny preset with LayerNorm extractor (per-frame norms instead of the layer-0
GroupNorm over the whole utterance) and no transformer layers, so that output frame t depends only on input frames
t - 16 .. t + 15 (the positional convolution, kernel 32) and samples [320 t - 5120, 320 t + 5200). For such a model,
windows that give every kept frame 16 frames of context on each side must reproduce the whole-utterance forward,
and windows that give it less must not: both are checked, at the exact threshold. The real tiny model (global
attention) is used where equality with the unchunked run is expected for other reasons: utterances shorter than a
window, and the same utterances batched differently.
"""

from __future__ import annotations

import os
import random
from typing import Dict, List, Sequence

import pytest
import torch
from torch import nn

import inference
from common.chunking import ChunkingConfig, FrameGeometry, check_chunk_flags
from common.data import Dictionary
from common.evaluation import EvalSettings, chunked_forward, forward_batches, run_ctc_evaluation
from common.logging import read_dllogger_log
from conftest import make_corpus
from wav2vec2 import Wav2Vec2ForCTC, preset
from wav2vec2.checkpoint import model_checkpoint

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0, final_dropout=0.0)
SR = 16000
VOCAB = 8
POS_CONV_HALF = 16  # tiny preset: conv_pos = 32 frames, output t sees frames t - 16 .. t + 15
TOL = dict(rtol=1e-5, atol=1e-5)


class PassThrough(nn.Module):
    """Stands in for a transformer layer (called as ``layer(x, attn_mask)``)."""

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        return x


def _local_model(seed: int = 0, **overrides) -> Wav2Vec2ForCTC:
    torch.manual_seed(seed)
    cfg = preset("tiny", encoder_layers=0, extractor_mode="layer_norm", **NO_DROP, **overrides)
    return Wav2Vec2ForCTC(cfg, VOCAB).eval()


@pytest.fixture(scope="module")
def local_model() -> Wav2Vec2ForCTC:
    return _local_model()


@pytest.fixture(scope="module")
def global_model() -> Wav2Vec2ForCTC:
    torch.manual_seed(1)
    model = Wav2Vec2ForCTC(preset("tiny", **NO_DROP), VOCAB)
    return inference.prepare_model(model, torch.device("cpu"))  # eval, masked extractor, as inference.py runs it


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    return torch.randn(320_000, generator=torch.Generator().manual_seed(3))  # 20 s


def _whole(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = model(x[None], None)
    return logits[0]


def _chunked(model, x: torch.Tensor, chunking: ChunkingConfig) -> torch.Tensor:
    with torch.no_grad():
        logits, out_lengths, windows = chunked_forward(model, x[None], [x.numel()], chunking)
    assert windows == [len(chunking.plan(x.numel()))]
    assert int(out_lengths[0]) == logits.shape[1]
    return logits[0]


def _config(model, window_s: float = 2.0, overlap_frames: int = 2 * POS_CONV_HALF, multiple=None,
            **limits) -> ChunkingConfig:
    geometry = FrameGeometry.from_model(model)
    if multiple is not None:
        geometry = FrameGeometry(geometry.conv_layers, multiple)
    limits = limits or {"batch_size": 4}
    return ChunkingConfig(int(window_s * SR), overlap_frames, geometry, **limits)


# ----------------------------------------------------------------------------------------------- exact oracle


# 2 s windows = 99 frames, hop 67 frames = 21440 samples; each case has a last window shorter than the others
LENGTHS = [320_000, 319_999, 100_123, 32_001, 32_000 + 21_440 + 1, 64_000 + 319]


@pytest.mark.parametrize("length", LENGTHS)
def test_chunked_equals_whole_forward_for_a_local_model(local_model, wave, length):
    chunking = _config(local_model)
    assert chunking.lead_frames == POS_CONV_HALF and chunking.shared_frames - chunking.lead_frames == POS_CONV_HALF
    plan = chunking.plan(length)
    assert len(plan) >= 2 and plan[-1].num_samples < chunking.window_samples
    x = wave[:length]
    whole, chunked = _whole(local_model, x), _chunked(local_model, x, chunking)
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked, whole, **TOL), (chunked - whole).abs().max()


def test_flags_in_seconds_give_the_exact_result(local_model, wave):
    chunking = ChunkingConfig.from_seconds(2.0, 0.64, FrameGeometry.from_model(local_model), batch_size=3)
    assert chunking.overlap_frames == 32
    assert torch.allclose(_chunked(local_model, wave, chunking), _whole(local_model, wave), **TOL)


@pytest.mark.parametrize("overlap_frames", [31, 30, 10, 0])
def test_too_little_overlap_is_not_exact(local_model, wave, overlap_frames):
    """One frame of context less than the positional convolution needs, and the stitched logits differ: the exact
    test above can fail."""
    chunking = _config(local_model, overlap_frames=overlap_frames)
    whole, chunked = _whole(local_model, wave), _chunked(local_model, wave, chunking)
    assert chunked.shape == whole.shape
    assert not torch.allclose(chunked, whole, **TOL)
    assert (chunked - whole).abs().max() > 1e-2


def test_hourglass_windows_start_on_pooling_groups():
    """A local Hourglass model (pooling groups of 4 frames, pass-through layers): exact only when window starts are
    multiples of 4 frames, which FrameGeometry.from_model arranges."""
    model = _local_model(hourglass_transformer="[0,(1,4),0]")
    model.w2v_model.encoder.hourglass_layers = nn.ModuleList([PassThrough()])
    x = torch.randn(150_017, generator=torch.Generator().manual_seed(4))
    aligned = _config(model)
    assert aligned.geometry.frame_multiple == 4 and aligned.hop_frames % 4 == 0
    assert torch.allclose(_chunked(model, x, aligned), _whole(model, x), **TOL)
    misaligned = _config(model, multiple=1)
    assert misaligned.hop_frames % 4 != 0
    assert not torch.allclose(_chunked(model, x, misaligned), _whole(model, x), **TOL)


# ----------------------------------------------------------------------------------------------- window plan


def test_frame_count_formula_matches_output_lengths(local_model):
    geometry = FrameGeometry.from_model(local_model)
    assert (geometry.stride, geometry.receptive_field) == (320, 400)
    lengths = list(range(0, 4000)) + [32_000, 319_999, 320_000, 9_600_000 + 7]
    expected = local_model.w2v_model.output_lengths(torch.tensor(lengths)).clamp_min(0).tolist()
    assert [geometry.num_frames(n) for n in lengths] == expected


def _boundary_lengths(chunking: ChunkingConfig, rng: random.Random) -> List[int]:
    w, step = chunking.window_samples, chunking.hop_frames * chunking.geometry.stride
    out = {400, 401, 719, 720, 1000, w - 1, w, w + 1}
    for k in range(0, 6):
        for d in (-321, -320, -319, -1, 0, 1, 79, 80, 81, 319, 320, 321):
            out.add(w + k * step + d)
    out.update(rng.randrange(400, w + 40 * step) for _ in range(150))
    return sorted(n for n in out if n >= 400)


@pytest.mark.parametrize("window_s, overlap_frames, multiple", [
    (2.0, 32, 1), (2.0, 0, 1), (2.0, 98, 1), (1.0, 13, 1), (2.0, 32, 4), (0.5, 5, 4), (0.0251, 0, 1)])
def test_windows_partition_the_whole_utterance_frames(local_model, window_s, overlap_frames, multiple):
    """Property test over lengths around window boundaries: kept frames partition [0, output_lengths(L)) and each
    window computes the frames it contributes, with the promised context."""
    chunking = _config(local_model, window_s, overlap_frames, multiple)
    stride, w = chunking.geometry.stride, chunking.window_samples
    frames_of = local_model.w2v_model.output_lengths  # the model's own frame count: the oracle
    for length in _boundary_lengths(chunking, random.Random(window_s)):
        plan = chunking.plan(length)
        n = int(frames_of(torch.tensor(length)))
        kept = [t for win in plan for t in range(win.keep_start, win.keep_stop)]
        assert kept == list(range(n)), length
        if length <= w:
            assert [(p.start, p.stop) for p in plan] == [(0, length)]
            continue
        assert plan[0].start == 0
        # the last window reaches the end, unless (overlap 0) the samples after it make no frame of their own
        assert plan[-1].stop == length or (overlap_frames == 0 and int(frames_of(torch.tensor(plan[-1].stop))) == n)
        for i, win in enumerate(plan):
            assert win.start % (stride * multiple) == 0 and win.first_frame * stride == win.start
            assert 0 < win.num_samples <= w and win.stop <= length
            produced = int(frames_of(torch.tensor(win.num_samples)))
            assert win.first_frame <= win.keep_start < win.keep_stop <= win.first_frame + produced
            if i > 0:
                assert win.keep_start - win.first_frame == chunking.lead_frames
            if i < len(plan) - 1:
                assert win.first_frame + produced - win.keep_stop >= chunking.shared_frames - chunking.lead_frames
                assert chunking.shared_frames >= overlap_frames


# ----------------------------------------------------------------------------------------------- evaluation loop


def _batch(waves: Sequence[torch.Tensor], ids: Sequence[int]) -> Dict[str, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in waves])
    source = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        source[i, : w.numel()] = w
    return {"id": torch.tensor(list(ids)), "source": source, "lengths": lengths}


def _evaluate(model, batches, chunking=None):
    settings = EvalSettings(symbols=[str(i) for i in range(VOCAB)], keep_log_probs=True, chunking=chunking)
    return run_ctc_evaluation(model, batches, settings).utterances


def _waves(lengths, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return [0.5 * torch.randn(n, generator=gen) for n in lengths]


def test_short_utterances_are_bitwise_unchanged(global_model):
    waves = _waves([48_000, 31_000, 17_777, 48_000])  # all <= the 3 s window
    batches = [_batch(waves[:3], [0, 1, 2]), _batch(waves[3:], [3])]
    plain = _evaluate(global_model, batches)
    chunked = _evaluate(global_model, batches, _config(global_model, 3.0, 50))
    for a, b in zip(plain, chunked):
        assert torch.equal(a.log_probs, b.log_probs) and a.pred_ids == b.pred_ids and b.windows == 1


@pytest.mark.parametrize("limits", [{"batch_size": 2}, {"max_duration": 7.0}, {"batch_size": 16}])
def test_padded_batch_equals_one_by_one(global_model, limits):
    """A padded batch mixing chunked and unchunked utterances gives each the result it gets alone."""
    lengths = [160_000, 24_000, 116_811, 48_000, 48_001]  # 10 s, 1.5 s, 7.3 s, exactly the window, one sample more
    waves = _waves(lengths)
    chunking = _config(global_model, 3.0, 50, **limits)
    together = _evaluate(global_model, [_batch(waves, range(5))], chunking)
    alone = _evaluate(global_model, [_batch([w], [i]) for i, w in enumerate(waves)], chunking)
    for a, b, n in zip(together, alone, lengths):
        assert a.windows == b.windows == len(chunking.plan(n)) and (a.windows > 1) == (n > 48_000)
        assert a.log_probs.shape == b.log_probs.shape == (global_model.w2v_model.output_lengths(torch.tensor(n)),
                                                          VOCAB)
        assert torch.allclose(a.log_probs, b.log_probs, atol=1e-4, rtol=1e-4)


def test_padded_batch_of_a_local_model_equals_whole_utterances(local_model):
    """Through the evaluation loop, padded batch, several window groups: chunked log-probs == whole ones."""
    waves = _waves([200_000, 24_000, 99_999, 32_000])
    batches = [_batch(waves, range(4))]
    whole = _evaluate(local_model, batches)
    chunked = _evaluate(local_model, batches, _config(local_model, max_duration=5.0))
    assert [u.windows for u in chunked] == [len(_config(local_model).plan(w.numel())) for w in waves]
    for a, b in zip(whole, chunked):
        assert torch.allclose(a.log_probs, b.log_probs, **TOL) and a.pred_ids == b.pred_ids


def test_forward_batches_lists_the_model_calls(global_model):
    calls: List[List[int]] = []

    def recording(source, lengths):
        calls.append([source.shape[1]] * source.shape[0] if lengths is None else lengths.tolist())
        return global_model(source, lengths)

    waves = _waves([100_000, 20_000, 60_000])
    chunking = _config(global_model, 3.0, 50, max_duration=6.0)
    _evaluate(recording, [_batch(waves, range(3))], chunking)
    assert calls == forward_batches([w.numel() for w in waves], chunking)
    assert forward_batches([20_000, 30_000], chunking) == [[20_000, 30_000]]
    assert forward_batches([100_000], None) == [[100_000]]


# ----------------------------------------------------------------------------------------------- flags and CLI


@pytest.mark.parametrize("chunk, overlap, message", [
    (None, 0.5, "--chunk_overlap_seconds needs --chunk_seconds"),
    (-1.0, None, "--chunk_seconds must be a positive"),
    (0.0, None, "--chunk_seconds must be a positive"),
    (1.0, -0.1, "--chunk_overlap_seconds must be >= 0"),
    (1.0, 1.0, "must be smaller than --chunk_seconds"),
    (1.0, 2.0, "must be smaller than --chunk_seconds"),
])
def test_flag_errors(chunk, overlap, message):
    with pytest.raises(ValueError, match=message):
        check_chunk_flags(chunk, overlap)


def test_model_dependent_errors(local_model):
    geometry = FrameGeometry.from_model(local_model)
    with pytest.raises(ValueError, match="shorter than the model's receptive field"):
        ChunkingConfig.from_seconds(0.02, 0.0, geometry, batch_size=1)
    with pytest.raises(ValueError, match="fewer than 1 new frame"):
        ChunkingConfig.from_seconds(0.05, 0.04, geometry, batch_size=1)  # 2 frames per window, overlap 2
    with pytest.raises(ValueError, match="Hourglass factor"):
        ChunkingConfig.from_seconds(0.1, 0.04, FrameGeometry(geometry.conv_layers, 4), batch_size=1)  # hop 2 < 4
    with pytest.raises(ValueError, match="batch_size or a max_duration"):
        ChunkingConfig.from_seconds(1.0, 0.2, geometry)
    default = ChunkingConfig.from_seconds(2.0, None, geometry, batch_size=1)
    assert default.overlap_frames == 25  # a quarter of 2 s in 20 ms frames


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long_audio")
    data = make_corpus(str(tmp / "corpus"), n_train=8, n_valid=6, seed=7)
    dictionary = Dictionary.load(os.path.join(data, "dict.ltr.txt"))
    ckpts = {}
    torch.manual_seed(0)
    local = Wav2Vec2ForCTC(preset("tiny", encoder_layers=0, extractor_mode="layer_norm", **NO_DROP), len(dictionary))
    torch.manual_seed(0)
    full = Wav2Vec2ForCTC(preset("tiny", **NO_DROP), len(dictionary))
    for name, model in (("local", local), ("global", full)):
        with torch.no_grad():  # a blank-heavy but not blank-only random model
            model.w2v_encoder.proj.bias[0] += 0.5
        ckpts[name] = str(tmp / f"{name}.pt")
        torch.save(model_checkpoint(model, labels=dictionary.to_text()), ckpts[name])
    with open(os.path.join(data, "valid.tsv")) as fh:
        sizes = [int(line.split("\t")[1]) for line in fh.read().splitlines()[1:]]
    return {"tmp": tmp, "data": data, "ckpts": ckpts, "sizes": sizes}


def _cli(corpus, name, ckpt, *extra):
    out = corpus["tmp"] / name
    os.makedirs(out, exist_ok=True)
    argv = ["--w2v_path", corpus["ckpts"][ckpt], "--data", corpus["data"], "--valid_subset", "valid",
            "--output_dir", str(out), "--num_workers", "0", "--cpu", "--save_predictions", str(out / "p.tsv"),
            "--save_logits", str(out / "l.pt"), *extra]
    return inference.main(argv), out


def _log(out) -> dict:
    return [r for r in read_dllogger_log(os.path.join(out, "nvlog_infer.json")) if r.get("step") == []][-1]["data"]


def test_defaults_are_off():
    args = inference.build_parser().parse_args(["--output_dir", "unused"])
    assert args.chunk_seconds is None and args.chunk_overlap_seconds is None


@pytest.mark.parametrize("extra, message", [
    (["--chunk_seconds", "-1"], "--chunk_seconds must be a positive"),
    (["--chunk_seconds", "1", "--chunk_overlap_seconds", "1"], "must be smaller than --chunk_seconds"),
    (["--chunk_seconds", "1", "--chunk_overlap_seconds", "-0.5"], "--chunk_overlap_seconds must be >= 0"),
    (["--chunk_overlap_seconds", "0.5"], "needs --chunk_seconds"),
    (["--chunk_seconds", "0.02"], "shorter than the model's receptive field (400 samples"),
])
def test_cli_argument_errors(corpus, capsys, extra, message):
    rc, _ = _cli(corpus, "errors", "global", "--batch_size", "2", *extra)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_cli_local_model_chunked_equals_whole(corpus, capsys):
    """End to end on the local model: chunked logits and predictions equal the unchunked run's."""
    rc, whole_out = _cli(corpus, "whole", "local", "--batch_size", "3")
    assert rc == 0 and "Chunked inference" not in capsys.readouterr().out
    # 0.8 s windows (39 frames) sharing 0.64 s (32 frames): every utterance (0.8 .. 1.6 s) is chunked
    rc, chunk_out = _cli(corpus, "chunked", "local", "--batch_size", "3", "--chunk_seconds", "0.8",
                         "--chunk_overlap_seconds", "0.64")
    assert rc == 0
    printed = capsys.readouterr().out
    long = sum(n > 0.8 * SR for n in corpus["sizes"])
    assert long == len(corpus["sizes"])
    assert f"Chunked inference: {long} of {len(corpus['sizes'])} utterances longer than 0.8 s" in printed
    with open(whole_out / "p.tsv") as a, open(chunk_out / "p.tsv") as b:
        assert a.read() == b.read()
    whole, chunked = torch.load(whole_out / "l.pt"), torch.load(chunk_out / "l.pt")
    for a, b in zip(whole["log_probs"], chunked["log_probs"]):
        assert a.shape == b.shape and torch.allclose(a, b, **TOL)
    log = _log(chunk_out)
    assert log["chunked_utterances"] == long and log["chunk_windows"] > long
    assert log["eval_wer"] == _log(whole_out)["eval_wer"]


def test_cli_global_model_counts_chunked_utterances(corpus, capsys):
    rc, out = _cli(corpus, "global_chunked", "global", "--max_duration", "2.5", "--chunk_seconds", "1.2",
                   "--chunk_overlap_seconds", "0.4")
    assert rc == 0
    long = sum(n > 1.2 * SR for n in corpus["sizes"])
    assert 0 < long < len(corpus["sizes"])  # the corpus has both kinds
    assert f"Chunked inference: {long} of {len(corpus['sizes'])} utterances" in capsys.readouterr().out
    assert _log(out)["chunked_utterances"] == long
    rows = open(out / "p.tsv").read().splitlines()
    assert len(rows) == 1 + len(corpus["sizes"])
