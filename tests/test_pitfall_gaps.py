"""Checks for the peer-system pitfalls of /work/shared/PITFALLS.md that had no test yet: 8 (checkpoints written by
HuggingFace transformers itself, legacy weight-norm keys included), 3 (no host-device synchronisation in the
pretraining step: masks, negatives and Gumbel noise made on the device) and 5 (LayerDrop under multi-process
training: every rank drops the same layers, dropped layers keep no gradient, no hang)."""

from __future__ import annotations

import json
import os
import socket
import time
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import RecordingLogger
from test_device_placement import meta_autocast  # noqa: F401 (fixture)

#: the model of ``conftest.MICRO_MODEL`` as config overrides, without dropout
MICRO = dict(
    conv_feature_layers="[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2", encoder_layers=2, encoder_embed_dim=32,
    encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4, final_dim=16,
    latent_vars=8, num_negatives=10, mask_prob=0.5, mask_length=4, dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, dropout_features=0.0,
)

# ---------------------------------------------------------------------------------------------------------------------
# PITFALLS 8: checkpoints written by transformers itself
# ---------------------------------------------------------------------------------------------------------------------

#: HF ``Wav2Vec2Config`` fields of a small model (HF's own names; Base-like and Large-like variants). The last
#: conv width (32) differs from the hidden size (48), as in every released model: fairseq's architecture has no
#: feature projection when the two are equal, HF's always has one (see the export test below)
HF_TINY = dict(
    hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
    conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
    num_codevectors_per_group=8, num_codevector_groups=2, codevector_dim=16, proj_codevector_dim=12,
    num_negatives=10,
)
HF_VARIANTS = {
    "base_like": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
    "large_like": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}
LEGACY_KEYS = {  # older transformers releases saved the positional conv with weight_norm's hook names
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def _hf_model(variant: str, ctc: bool):
    """A transformers model with transformers' own random init, norms and biases perturbed (so that a swapped or
    dropped weight cannot hide behind a default 1 or 0), in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(vocab_size=12, **HF_TINY, **HF_VARIANTS[variant])
    model = (transformers.Wav2Vec2ForCTC if ctc else transformers.Wav2Vec2ForPreTraining)(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "original0" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _save(model, out_dir, legacy: bool) -> str:
    """``save_pretrained`` by transformers; ``legacy``: the same weights rewritten as an older transformers release
    stored them (``pytorch_model.bin``, ``pos_conv_embed.conv.weight_g`` / ``weight_v``)."""
    model.save_pretrained(out_dir)
    if legacy:
        from safetensors.torch import load_file

        sd = load_file(os.path.join(out_dir, "model.safetensors"))
        renamed = {}
        for key, value in sd.items():
            for new, old in LEGACY_KEYS.items():
                key = key.replace(new, old)
            renamed[key] = value
        assert any(k.endswith("pos_conv_embed.conv.weight_g") for k in renamed)
        assert not any("parametrizations" in k for k in renamed)
        os.remove(os.path.join(out_dir, "model.safetensors"))
        torch.save(renamed, os.path.join(out_dir, "pytorch_model.bin"))
    with open(os.path.join(out_dir, "config.json")) as f:
        assert "wav2vec2_trainer_config" not in json.load(f)  # transformers' own config, nothing of ours
    return out_dir


def _waves(batch=2, length=9000, seed=1):
    return torch.randn(batch, length, generator=torch.Generator().manual_seed(seed)) * 0.3


@pytest.mark.parametrize("legacy", [False, True], ids=["parametrized_keys", "legacy_weight_g_v"])
@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_ctc_checkpoint_saved_by_transformers_gives_its_logits(tmp_path, variant, legacy):
    """PITFALLS 8 (transformers #13750, #31633): a ``Wav2Vec2ForCTC`` directory written by transformers'
    ``save_pretrained`` (current ``parametrizations.weight.original0/1`` keys, or the legacy ``weight_g`` /
    ``weight_v`` spelling in a ``pytorch_model.bin``) loads through ``load_checkpoint`` to a model whose logits
    equal transformers' own on the same (unpadded) input."""
    from wav2vec2 import Wav2Vec2ForCTC
    from wav2vec2.checkpoint import load_checkpoint

    hf = _hf_model(variant, ctc=True)
    loaded = load_checkpoint(_save(hf, str(tmp_path / "hf"), legacy))
    assert loaded.source_format == "hf" and isinstance(loaded.model, Wav2Vec2ForCTC) and not loaded.model.training
    x = _waves()
    with torch.no_grad():
        ref = hf(x).logits
        ours, _ = loaded.model(x, None)
    assert ours.shape == ref.shape == (2, 449, 12)  # 9000 samples -> 1799 -> 899 -> 449 frames
    assert (ours - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("legacy", [False, True], ids=["parametrized_keys", "legacy_weight_g_v"])
def test_pretraining_checkpoint_saved_by_transformers_gives_its_losses(tmp_path, legacy):
    """PITFALLS 8: a ``Wav2Vec2ForPreTraining`` directory written by transformers loads with every pretraining head
    (quantizer code book and projection, ``project_q``, ``project_hid``): transformer states and, for the same
    mask and negatives, the contrastive loss and the (hard-code) diversity term equal transformers' own."""
    from test_hf_parity import _mask_and_negatives, _to_hf_negatives

    from wav2vec2 import Wav2Vec2Model
    from wav2vec2.checkpoint import load_checkpoint
    from wav2vec2.criterion import ContrastiveCriterion

    hf = _hf_model("base_like", ctc=False)
    loaded = load_checkpoint(_save(hf, str(tmp_path / "hf"), legacy))
    ours = loaded.model
    assert isinstance(ours, Wav2Vec2Model) and ours.quantizer is not None
    x = _waves(3, 12000, seed=2)
    mask, neg = _mask_and_negatives(ours, x, ours.cfg.num_negatives)
    gv = ours.cfg.latent_vars * ours.cfg.latent_groups
    with torch.no_grad():
        feats, _ = ours.extract_features(x, None)
        assert (feats - hf.wav2vec2(x).last_hidden_state).abs().max() < 1e-4
        out = ours(x, mask_indices=mask, negative_indices=neg)
        _, sample_size, log = ContrastiveCriterion(loss_weights=(0.1, 0.0))(out)
        ref = hf(x, mask_time_indices=mask, sampled_negative_indices=_to_hf_negatives(neg, mask))
    assert abs(float(log["loss_0"]) - float(ref.contrastive_loss)) < 2e-6 * abs(float(ref.contrastive_loss)) + 1e-4
    ours_div = (gv - float(out.code_perplexity[0])) / gv * sample_size
    assert abs(ours_div - float(ref.diversity_loss)) < 2e-6 * ours_div + 1e-4


def test_export_without_feature_projection_keeps_logits_in_transformers(tmp_path):
    """PITFALLS 8, the export direction, for a model whose last conv width equals ``encoder_embed_dim`` (fairseq then
    builds no ``post_extract_proj``; ``conftest.MICRO_MODEL`` is such a model): transformers always has a feature
    projection, so an exact export writes one that does nothing (identity weight, zero bias; transformers would
    otherwise fill it at random, with a warning only). Reading the export back drops that identity again."""
    transformers = pytest.importorskip("transformers")
    from wav2vec2 import Wav2Vec2ForCTC, preset
    from wav2vec2.checkpoint import load_checkpoint, save_hf

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny", **MICRO), 8).eval()
    assert model.w2v_model.post_extract_proj is None
    save_hf(model, str(tmp_path / "hf"))
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(str(tmp_path / "hf")).eval()
    x = _waves(1)
    with torch.no_grad():
        ours = model(x, None)[0]
        assert (ours - hf(x).logits).abs().max() < 1e-4
        back = load_checkpoint(str(tmp_path / "hf")).model.eval()
        assert back.w2v_model.post_extract_proj is None
        torch.testing.assert_close(back(x, None)[0], ours, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# PITFALLS 3: no host-device synchronisation in the pretraining step
# ---------------------------------------------------------------------------------------------------------------------


class _TransferSpy(TorchDispatchMode):
    """Records every aten op that moves data between the host and the device under test (``meta``): a host tensor
    (0-dim scalars aside, which a GPU kernel takes as an argument) going into an op whose output is on the device,
    or a device tensor going into an op whose output is on the host."""

    def __init__(self):
        super().__init__()
        self.transfers = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        out_devices = {o.device.type for o in outs}
        host_in = any(a.device.type == "cpu" and a.dim() > 0 for a in ins)
        device_in = any(a.device.type == "meta" for a in ins)
        if (host_in and "meta" in out_devices) or (device_in and "cpu" in out_devices):
            self.transfers.append(str(func))
        return out


@pytest.mark.parametrize("sub_batch_sizes", [None, [1, 1]], ids=["one_batch", "two_sub_batches"])
def test_pretraining_step_draws_masks_negatives_and_gumbel_noise_on_the_device(sub_batch_sizes, meta_autocast):
    """PITFALLS 3 (fairseq #3114, #4574: masking and negative sampling on the host starve the GPU): the pretraining
    forward (training mode: time masks, channel masks, Gumbel noise, negatives, LayerDrop) plus the contrastive
    criterion and backward run on the ``meta`` device without a single tensor crossing between host and device,
    apart from the one documented read per sub-batch: the masked-frame count that sets the shapes (``tolist`` on
    a device tensor, answered here since meta has no values). The criterion's logged values stay device tensors
    (the metrics read them all at once per update)."""
    from wav2vec2 import Wav2Vec2Model, preset
    from wav2vec2.criterion import ContrastiveCriterion

    cfg = preset("tiny", **dict(MICRO, mask_channel_prob=0.1, mask_channel_length=4, encoder_layerdrop=0.5))
    model = Wav2Vec2Model(cfg).train().to("meta")
    host_reads = []
    original_tolist = torch.Tensor.tolist

    def tolist(t):
        if t.device.type != "meta":
            return original_tolist(t)
        host_reads.append(tuple(t.shape))
        return [7] * t.shape[0]  # masked frames per utterance (any count from 2 to the 43 frames would do)

    spy = _TransferSpy()
    with mock.patch.object(torch.Tensor, "tolist", tolist), spy:
        out = model(torch.empty(2, 14000, device="meta"), None, sub_batch_sizes=sub_batch_sizes)
        loss, sample_size, log = ContrastiveCriterion()(out)
        loss.backward()
    assert spy.transfers == []
    assert host_reads == ([(2,)] if sub_batch_sizes is None else [(1,), (1,)])
    assert out.mask_indices.device.type == "meta" and all(n.device.type == "meta" for n in out.negative_indices)
    assert sample_size == 14 and loss.device.type == "meta"
    assert all(v.device.type == "meta" for v in log.values() if isinstance(v, torch.Tensor))
    assert {k for k, v in log.items() if not isinstance(v, torch.Tensor)} <= {"ntokens", "nsentences",
                                                                             "sample_size", "count", "temp"}
    assert model.quantizer.weight_proj.weight.grad.device.type == "meta"


def test_the_transfer_spy_sees_host_made_randomness():
    """The oracle works: a mask drawn on the host and copied to the device is reported."""
    spy = _TransferSpy()
    with spy:
        torch.rand(2, 5).lt(0.5).to("meta")
        torch.rand(2, 5, device="meta").lt(0.5)
    assert spy.transfers == ["aten._to_copy.default"]


# ---------------------------------------------------------------------------------------------------------------------
# PITFALLS 5: LayerDrop with several processes
# ---------------------------------------------------------------------------------------------------------------------

N_UPDATES = 3
LAYERDROP_CFG = dict(MICRO, encoder_layers=4, encoder_layerdrop=0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _MicroBatches:
    """The toy loader protocol over a fixed list of waveform batches: ``batches[i]`` for i in ``indices``."""

    def __init__(self, indices):
        g = torch.Generator().manual_seed(5)
        self.waves = torch.randn(2 * N_UPDATES, 2, 6000, generator=g) * 0.3
        self.indices = list(indices)
        self.epoch, self.batch_in_epoch = 1, 0

    def __len__(self):
        return len(self.indices)

    def set_epoch(self, e):
        self.epoch = e

    def __iter__(self):
        for n, i in enumerate(self.indices):
            self.batch_in_epoch = n + 1
            yield {"source": self.waves[i]}

    def state_dict(self):
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, s, allow_plan_change=False):
        self.epoch, self.batch_in_epoch = s["epoch"], s["batch_in_epoch"]


class _SameLayersEveryMicroBatch:
    """The pretraining task, re-seeding the LayerDrop stream before every micro-batch through the model's own
    ``set_num_updates``: one process then runs all micro-batches of an update with the one layer set that the
    ranks of a multi-process run share."""

    mode = "pretrain"

    def __init__(self, task):
        self.task = task

    def train_step(self, model, batch, generator):
        model.set_num_updates(model.num_updates)
        return self.task.train_step(model, batch, generator)

    valid_step = train_step


def _layerdrop_run(rank: int, world_size: int, out_path: str) -> None:
    """``N_UPDATES`` FP32 pretraining updates of the LayerDrop model: rank r of W (update_freq 1) takes batches
    2k + r; a single process (W = 1, update_freq 2) takes 2k and 2k + 1 with one layer set per update. Saves the
    gradients the optimizer saw at every update (None = no gradient), the encoder layers each forward ran and the
    final weights."""
    from common.distributed import DistEnv
    from common.lr_schedules import LRScheduleConfig, LRScheduler
    from common.metrics import MetricsAggregator, MetricsSpec
    from common.optim import OptimizerConfig, build_optimizer
    from common.precision import PrecisionPolicy
    from common.trainer import Trainer, TrainerConfig
    from wav2vec2 import Wav2Vec2Model, preset
    from wav2vec2.criterion import ContrastiveCriterion
    from wav2vec2.tasks import PretrainTask

    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny", **LAYERDROP_CFG))
    model.layerdrop_seed = 1
    task = PretrainTask(ContrastiveCriterion())
    if world_size == 1:
        task = _SameLayersEveryMicroBatch(task)
        indices = range(2 * N_UPDATES)
    else:
        indices = range(rank, 2 * N_UPDATES, 2)
    opt = build_optimizer(model.parameters(), OptimizerConfig(lr=1e-3))
    precision = PrecisionPolicy(mode="fp32", device="cpu")
    trainer = Trainer(
        TrainerConfig(output_dir=os.path.dirname(out_path), max_update=N_UPDATES, update_freq=3 - world_size,
                      no_save=True, validate=False),
        model=model, task=task, optimizer=opt,
        scheduler=LRScheduler(opt, LRScheduleConfig(lr=1e-3, max_update=100, warmup_updates=1)),
        precision=precision, scaler=precision.make_loss_scaler(world_size, 3 - world_size),
        train_loader=_MicroBatches(indices), valid_loader=None, metrics=MetricsAggregator(MetricsSpec.pretrain()),
        valid_metrics=MetricsAggregator(MetricsSpec.pretrain()), logger=RecordingLogger(), print_fn=lambda *a: None,
        env=DistEnv(rank=rank, world_size=world_size),
    )
    runs = []  # (update, encoder layers that ran) for every forward
    model.encoder.register_forward_pre_hook(lambda mod, inp: runs.append((trainer.state.step, [])))
    for i, layer in enumerate(model.encoder.layers):
        layer.register_forward_pre_hook(lambda mod, inp, i=i: runs[-1][1].append(i))
    grads = []
    orig_step = opt.step

    def spy():
        grads.append({n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()})
        orig_step()

    opt.step = spy
    trainer.fit()
    torch.save({"grads": grads, "runs": runs, "weights": model.state_dict(), "step": trainer.state.step}, out_path)


def _rank_worker(rank: int, port: int, out_dir: str) -> None:
    from conftest import gloo_worker

    with gloo_worker(rank, port):
        _layerdrop_run(rank, 2, os.path.join(out_dir, f"rank{rank}.pt"))


def test_layerdrop_with_two_processes_drops_the_same_layers_everywhere(tmp_path):
    """PITFALLS 5 (transformers #11452, #30113: DDP breaks with LayerDrop): two gloo processes with encoder LayerDrop
    0.5 finish without hanging; at every update both ranks run the same encoder layers (recorded by hooks) and see
    the same gradients, the layers LayerDrop skipped keep no gradient on any rank (so AdamW neither decays nor
    moves them), and the run equals the one-process
    accumulation of the same micro-batches with the same layer set (DEVIATIONS "randomness": LayerDrop decisions
    are shared by all ranks of an update; one process with update_freq 2 would otherwise draw a set per
    micro-batch, so its equivalent re-seeds the LayerDrop stream per micro-batch)."""
    ctx = mp.start_processes(_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.time() + 120
    while not ctx.join(timeout=0.2):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError("the two LayerDrop ranks did not finish (hang)")
    with torch.random.fork_rng(devices=[]):  # the trainer re-seeds the global RNG per micro-batch
        _layerdrop_run(0, 1, str(tmp_path / "single.pt"))
    r0, r1, one = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("rank0", "rank1", "single"))
    assert r0["step"] == r1["step"] == one["step"] == N_UPDATES
    assert len(r0["grads"]) == len(r1["grads"]) == len(one["grads"]) == N_UPDATES

    # every rank ran the same layers at every update, and so did both micro-batches of the single process
    all_layers = set(range(LAYERDROP_CFG["encoder_layers"]))
    ran = []
    for k in range(1, N_UPDATES + 1):
        sets = [sorted(layers) for run in (r0, r1, one) for step, layers in run["runs"] if step == k]
        assert len(sets) == 4 and all(x == sets[0] for x in sets), (k, sets)
        ran.append(set(sets[0]))
    # the check has teeth: some update dropped a layer, some update kept one
    assert any(s != all_layers for s in ran) and any(ran)

    def layer_of(name):
        parts = name.split(".")
        return int(parts[2]) if name.startswith("encoder.layers.") else None

    for k in range(N_UPDATES):
        g0, g1, gs = r0["grads"][k], r1["grads"][k], one["grads"][k]
        # exactly the parameters of the layers that no rank ran have no gradient, on every rank
        dropped = {n for n in g0 if layer_of(n) is not None and layer_of(n) not in ran[k]}
        for g in (g0, g1, gs):
            assert {n for n, v in g.items() if v is None} == dropped, k
        for n, g in g0.items():
            if g is not None:
                assert torch.equal(g, g1[n]), (k, n)
                assert torch.allclose(g, gs[n], rtol=1e-4, atol=1e-7), (k, n)
    for n, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][n]), n
        assert torch.allclose(w, one["weights"][n], rtol=1e-4, atol=1e-6), n
