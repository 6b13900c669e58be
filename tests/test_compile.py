"""common.compile.compile_blocks: which blocks get compiled, and that nothing about the model's keys changes.
(Compilation itself is lazy; the slow test in test_trainer.py trains with it against eager.)"""

from __future__ import annotations

from common.compile import compile_blocks
from wav2vec2 import Wav2Vec2Model, preset
from wav2vec2.encoder import TransformerLayer


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
