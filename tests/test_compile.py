"""common.compile.compile_blocks: which blocks get compiled, that nothing about the model's keys changes, how many
graphs the bucketed shapes of training and inference compile (counted with ``torch._dynamo.utils.counters``), the
compile reports, and the error without a C++ compiler. Most tests compile with dynamo's ``eager`` backend: guards,
recompilations and graph breaks are dynamo's, whatever the backend, and it needs no C++ compiler and no minutes.
(The slow tests in test_trainer.py / test_inference.py and the one below run inductor against eager.)"""

from __future__ import annotations

import os
import re

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import common.compile as cc
from common.compile import compile_blocks
from wav2vec2 import Wav2Vec2Model, preset
from wav2vec2.encoder import TransformerLayer

SMALL = dict(encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4,
             dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def test_compile_blocks_compiles_each_transformer_layer_in_place():
    for name in ("tiny", "base"):
        cfg = preset(name, hourglass_transformer=None)
        layers = cfg.encoder_layers
        model = Wav2Vec2Model(cfg)
        keys = list(model.state_dict())
        assert compile_blocks(model, (TransformerLayer,)) == layers
        assert list(model.state_dict()) == keys  # in place: no _orig_mod. prefixes
        assert all(m._compiled_call_impl is not None for m in model.modules() if isinstance(m, TransformerLayer))


def test_compile_blocks_skips_blocks_nested_in_a_compiled_block():
    model = Wav2Vec2Model(preset("tiny"))
    n_layers = sum(isinstance(m, TransformerLayer) for m in model.modules())
    assert compile_blocks(model, (type(model.encoder),)) == 1
    assert compile_blocks(Wav2Vec2Model(preset("tiny")), (TransformerLayer,)) == n_layers


@pytest.fixture
def eager_dynamo(monkeypatch):
    """torch.compile / Module.compile with backend="eager", a fresh dynamo cache, no toolchain check."""
    torch._dynamo.reset()
    real_compile, real_module_compile = torch.compile, nn.Module.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **k: real_compile(*a, **{**k, "backend": "eager"}))
    monkeypatch.setattr(nn.Module, "compile",
                        lambda self, *a, **k: real_module_compile(self, *a, **{**k, "backend": "eager"}))
    monkeypatch.setattr(cc, "check_toolchain", lambda device: None, raising=False)
    counters.clear()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _padding(lengths, t):
    return torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("hourglass", [None, "[1,(2,4),1]"])
def test_bucketed_batches_compile_one_graph_per_mode_not_per_batch(eager_dynamo, hourglass):
    """Training over padded batches of new lengths and batch sizes (LayerDrop on; Hourglass lengths that 4 does
    not divide) reuses the first graph; validation (eval, no_grad) adds one, and so does each of: unpadded batches
    (no attention mask), a batch of one utterance, BF16 autocast. None is per batch or per length; the layers share
    their graphs, and no graph breaks."""
    torch.manual_seed(0)
    cfg = preset("tiny", hourglass_transformer=hourglass, encoder_layerdrop=0.3, **SMALL)
    enc = Wav2Vec2Model(cfg).encoder
    n = compile_blocks(enc, (TransformerLayer,))
    assert n == (len(enc.layers) + (len(enc.hourglass_layers) + len(enc.post_layers) if hourglass else 0))
    enc.train()
    seen = []
    for step, (b, t) in enumerate([(2, 50), (3, 37), (2, 61), (4, 22), (3, 45), (2, 50)]):
        enc.reseed_layerdrop(step)
        lengths = [t] + [t - 3 - i for i in range(b - 1)]
        enc(torch.randn(b, t, 32), _padding(lengths, t)).square().mean().backward()
        seen.append(_graphs())
    assert seen == [1] * 6, seen  # the first batch compiled; new lengths and batch sizes did not
    enc.eval()
    with torch.no_grad():
        for b, t in [(3, 40), (2, 57)]:
            enc(torch.randn(b, t, 32), _padding([t] + [t - 2] * (b - 1), t))
    assert _graphs() == 2
    enc.train()
    for b, t in [(2, 30), (3, 41)]:  # unpadded (the pretraining batches, cropped): no mask, one more graph
        enc(torch.randn(b, t, 32)).sum().backward()
    assert _graphs() == 3
    for t in (33, 47):  # a batch of one (size-1 dims are specialised): one more
        enc(torch.randn(1, t, 32)).sum().backward()
    assert _graphs() == 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for b, t in [(2, 30), (3, 41)]:
            enc(torch.randn(b, t, 32)).float().sum().backward()
    assert _graphs() == 5
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


def test_compile_blocks_says_when_a_graph_compiles(eager_dynamo, capsys):
    """The first update of each new mode compiles for seconds to minutes on a CPU: a line on stderr says so, and
    how long it took; nothing is printed for the batches that reuse a graph."""
    enc = Wav2Vec2Model(preset("tiny", **SMALL)).encoder
    compile_blocks(enc, (TransformerLayer,))
    capsys.readouterr()
    enc(torch.randn(2, 20, 32), _padding([20, 15], 20)).sum().backward()
    err = capsys.readouterr().err
    assert re.search(r"^torch.compile: compiling graph \d+ ", err, re.M) and "compiled in" in err
    enc(torch.randn(3, 31, 32), _padding([31, 30, 12], 31)).sum().backward()
    assert "torch.compile" not in capsys.readouterr().err
    with torch.no_grad():
        enc.eval()
        enc(torch.randn(2, 20, 32), _padding([20, 15], 20))
    err = capsys.readouterr().err
    assert err.count("torch.compile: compiling graph") == 1 and "TORCH_LOGS=recompiles" in err


def test_no_cxx_compiler_is_one_clear_error_before_training():
    """CPU inductor needs a C++ compiler: without one, compile_blocks says so at once (the first compiled forward
    used to fail with a ~250-line inductor traceback, after the data and model set-up)."""
    import torch._inductor.config as inductor_config

    model = Wav2Vec2Model(preset("tiny", **SMALL))
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/g++")}):
        with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler") as info:
            compile_blocks(model, (TransformerLayer,))
    assert "\n" not in str(info.value) and "--torch_compile" in str(info.value)
    assert all(m._compiled_call_impl is None for m in model.modules())  # nothing half-done


def _ctc_model(seed=0):
    from wav2vec2.model import Wav2Vec2ForCTC

    torch.manual_seed(seed)
    return Wav2Vec2ForCTC(preset("tiny", encoder_layerdrop=0.0, **SMALL), 8)


def test_inference_compiles_the_transformer_layers_not_the_whole_model(eager_dynamo):
    """inference.prepare_model(torch_compile=True): the layers compiled in place (the model itself comes back, its
    keys unchanged); variable-length padded batches and a batch of one compile at most two graphs, with no graph
    break, and give the eager outputs. Compiling the whole model broke its graph 5 times in the feature extractor
    (addcmul with out=) and compiled 12 graphs for these batches."""
    import inference

    model, reference = _ctc_model(), _ctc_model()
    keys = list(model.state_dict())
    prepared = inference.prepare_model(model, torch.device("cpu"), torch_compile=True)
    assert prepared is model and list(prepared.state_dict()) == keys
    reference = inference.prepare_model(reference, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    for lengths in ([9000, 7000, 5000], [12000, 11000], [6400, 6400, 3000], [8000]):
        x = torch.zeros(len(lengths), max(lengths))
        for i, k in enumerate(lengths):
            x[i, :k] = 0.1 * torch.randn(k, generator=gen)
        lens = torch.tensor(lengths) if len(set(lengths)) > 1 else None
        with torch.no_grad():
            got, want = prepared(x, lens), reference(x, lens)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert _graphs() <= 2


def test_inference_without_cxx_compiler_is_an_error_not_a_traceback(tmp_path, tiny_corpus, capsys):
    """inference.py --torch_compile without a C++ compiler: "error: ..." and exit status 2 before the first batch."""
    import torch._inductor.config as inductor_config

    import inference
    from common.data import Dictionary
    from wav2vec2.checkpoint import model_checkpoint
    from wav2vec2.model import Wav2Vec2ForCTC

    dictionary = Dictionary.load(os.path.join(tiny_corpus, "dict.ltr.txt"))
    ckpt = str(tmp_path / "ctc.pt")
    torch.save(model_checkpoint(Wav2Vec2ForCTC(preset("tiny", **SMALL), len(dictionary)),
                                labels=dictionary.to_text()), ckpt)
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/g++")}):
        rc = inference.main(["--w2v_path", ckpt, "--data", tiny_corpus, "--valid_subset", "valid", "--output_dir",
                             str(tmp_path / "out"), "--num_workers", "0", "--cpu", "--batch_size", "2",
                             "--torch_compile"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: --torch_compile" in err and "C++ compiler" in err and "Traceback" not in err


def test_training_without_cxx_compiler_is_an_error_not_a_traceback(tmp_path, tiny_corpus, capsys):
    """train.py --torch_compile without a C++ compiler: one "error: ..." line and exit status 2 before any update."""
    import torch._inductor.config as inductor_config

    import train
    from test_trainer import _pretrain_args

    out = tmp_path / "out"
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/g++")}):
        rc = train.main(_pretrain_args(tiny_corpus, str(out), "--torch_compile"))
    err = capsys.readouterr().err
    assert rc == 2 and "error: --torch_compile" in err and "C++ compiler" in err and "Traceback" not in err
    assert not out.exists() or not any(name.endswith(".pt") for name in os.listdir(out))


@pytest.mark.slow
def test_finetuning_with_inductor_compiles_once_per_mode(tiny_corpus, tmp_path, capsys):
    """train.py pretrain then finetune --torch_compile in process, inductor: 24 updates (two epochs) of bucketed
    batches of one or two utterances, the encoder frozen for the first 3, LayerDrop and masking, validation each
    epoch. Graphs: a batch of one (no mask) and a padded batch while frozen (no_grad), the same two after the
    unfreeze, validation: 5, never per batch; no graph break; each compilation reported on stderr."""
    import train
    from conftest import MICRO_MODEL

    common = ["--data", tiny_corpus, "--train_subset", "train", "--valid_subset", "valid", "--cpu",
              "--required_batch_size_multiple", "1", "--num_workers", "0", "--update_freq", "1", "--log_frequency",
              "1", "--save_frequency", "1"]
    pre = str(tmp_path / "pre")
    assert train.main(["pretrain", *MICRO_MODEL, *common, "--output_dir", pre, "--max_tokens", "40000",
                       "--max_update", "2", "--warmup_updates", "1"]) == 0
    torch._dynamo.reset()
    counters.clear()
    assert train.main(["finetune", "--w2v_path", os.path.join(pre, "wav2vec2_update2.pt"), *common, "--output_dir",
                       str(tmp_path / "ft"), "--max_tokens", "40000", "--max_update", "24", "--lr", "0.001",
                       "--warmup_updates", "1", "--apply_mask", "--mask_prob", "0.3", "--mask_length", "4",
                       "--freeze_finetune_updates", "4", "--encoder_layerdrop", "0.2", "--torch_compile"]) == 0
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert _graphs() == 5
    assert capsys.readouterr().err.count("torch.compile: compiling graph") == _graphs()


def test_a_gpu_too_old_for_triton_is_not_reported_as_triton_missing(monkeypatch):
    """has_triton() is also False when Triton is installed but the GPU is older than compute capability 7.0 (P100,
    K80, GTX 10xx): the error said "not installed (pip install triton)", which does not help there."""
    import torch.utils._triton as tt

    from common.compile import CompileUnavailable, check_toolchain

    monkeypatch.setattr(tt, "has_triton", lambda: False)
    monkeypatch.setattr(tt, "has_triton_package", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100")
    with pytest.raises(CompileUnavailable, match=r"does not support Tesla P100, compute capability 6\.0") as info:
        check_toolchain("cuda")
    assert "not installed" not in str(info.value)
    monkeypatch.setattr(tt, "has_triton_package", lambda: False)
    with pytest.raises(CompileUnavailable, match="not installed"):
        check_toolchain("cuda")
