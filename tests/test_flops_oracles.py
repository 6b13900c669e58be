"""Oracle tests for wav2vec2/flops.py found by mutation testing: cross-sample negatives are contrastive columns too.

Oracle: the module's counting rule (REFERENCE.md §3.1: logits have 1 + N + cross-sample negatives columns per masked
frame; each is a final_dim-long dot product, 2 FLOPs per multiply-add; its backward gives both operands gradients,
2x the forward), evaluated by hand as the difference between two configurations."""

import pytest

from wav2vec2.config import preset
from wav2vec2.flops import pretraining_flops


@pytest.mark.parametrize("training", [True, False])
def test_cross_sample_negatives_add_their_similarity_columns(training):
    rows, cross = 37, 5
    base = preset("tiny", num_negatives=10)
    more = preset("tiny", num_negatives=10, cross_sample_negatives=cross)
    d = base.final_dim if base.final_dim > 0 else base.encoder_embed_dim
    a = pretraining_flops(base, 2, 8000, rows, training=training)
    b = pretraining_flops(more, 2, 8000, rows, training=training)
    forward = 2.0 * rows * cross * d
    assert b.forward - a.forward == pytest.approx(forward)
    assert b.backward - a.backward == pytest.approx(2 * forward if training else 0.0)
