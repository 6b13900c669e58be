"""Parity against HuggingFace transformers' Wav2Vec2 (an implementation nobody here wrote), same random weights.

Base-like: GroupNorm extractor, post-LN. Large-like: LayerNorm extractor with conv bias, pre-LN. FP32, eval mode,
padded batches of unequal lengths. HF's GroupNorm extractor normalises over padding, so for the Base-like model
our padded batch is compared with HF run on each utterance alone (which is what the masked extractor promises),
and our unmasked extractor is compared with HF on the padded batch.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2Model, preset  # noqa: E402
from wav2vec2.checkpoint import hf_config, hf_state_dict  # noqa: E402
from wav2vec2.criterion import ContrastiveCriterion  # noqa: E402

TOL = 1e-4
NO_DROP = dict(
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
    dropout_input=0.0, dropout_features=0.0, final_dropout=0.0,
)
CONFIGS = {
    "base_like": preset("tiny", **NO_DROP),
    "large_like": preset("tiny", extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True, **NO_DROP),
}
LENGTHS = [16000, 11234, 7000]


def _hf_cfg(cfg, vocab=None):
    d = hf_config(cfg, vocab, transformers_only=True)
    return transformers.Wav2Vec2Config(**d, attn_implementation="eager")


def _pair(name, ctc=False):
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    ours = Wav2Vec2ForCTC(cfg, 32) if ctc else Wav2Vec2Model(cfg)
    # randomise norms/biases too so that a swapped weight cannot hide
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf_cls = transformers.Wav2Vec2ForCTC if ctc else transformers.Wav2Vec2ForPreTraining
    hf = hf_cls(_hf_cfg(cfg, 32 if ctc else None))
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours), strict=False)
    assert not missing and not unexpected
    return ours.eval(), hf.eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor(LENGTHS)
    x = torch.zeros(len(LENGTHS), max(LENGTHS))
    for i, n in enumerate(LENGTHS):
        x[i, :n] = torch.randn(n, generator=g) * 0.3
    return x, lengths


def _hf_mask(lengths, total):
    return (torch.arange(total)[None, :] < lengths[:, None]).long()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_feature_extractor_matches_hf(name):
    ours, hf = _pair(name)
    x, lengths = _batch()
    with torch.no_grad():
        ref_batch = hf.wav2vec2.feature_extractor(x)
        # unmasked extractor on the padded batch == HF on the padded batch
        ours.feature_extractor.mask_padding = False
        plain, _ = ours.feature_extractor(x, lengths)
        assert (plain - ref_batch).abs().max() < TOL
        ours.feature_extractor.mask_padding = True
        masked, frames = ours.feature_extractor(x, lengths)
        for i, n in enumerate(LENGTHS):
            alone = hf.wav2vec2.feature_extractor(x[i : i + 1, :n])[0]
            assert alone.shape[-1] == frames[i]
            assert (masked[i, :, : frames[i]] - alone).abs().max() < TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformer_output_matches_hf(name):
    ours, hf = _pair(name)
    x, lengths = _batch()
    with torch.no_grad():
        feats, frames = ours.extract_features(x, lengths)
        for i, n in enumerate(LENGTHS):
            ref = hf.wav2vec2(x[i : i + 1, :n]).last_hidden_state[0]
            assert (feats[i, : frames[i]] - ref).abs().max() < TOL
        if name == "large_like":  # LayerNorm extractor: HF's own padded batch is padding-invariant too
            ref = hf.wav2vec2(x, attention_mask=_hf_mask(lengths, x.shape[1])).last_hidden_state
            for i in range(len(LENGTHS)):
                assert (feats[i, : frames[i]] - ref[i, : frames[i]]).abs().max() < TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ctc_logits_match_hf(name):
    ours, hf = _pair(name, ctc=True)
    x, lengths = _batch()
    with torch.no_grad():
        logits, frames = ours(x, lengths)
        assert logits.shape[:2] == (len(LENGTHS), frames.max())
        for i, n in enumerate(LENGTHS):
            ref = hf(x[i : i + 1, :n]).logits[0]
            assert (logits[i, : frames[i]] - ref).abs().max() < TOL


def _to_hf_negatives(neg, mask):
    """Our negatives index the flat (B*M) table of masked frames; HF's index the flat (B*T) frame table."""
    b, t = mask.shape
    m = int(mask[0].sum())
    pos = torch.stack([mask[i].nonzero().squeeze(1) for i in range(b)])  # B x M frame index of each masked slot
    utt, slot = neg // m, neg % m
    frame = pos[utt, slot] + utt * t  # B x M x N
    out = torch.zeros(b, t, neg.shape[-1], dtype=torch.long)
    for i in range(b):
        out[i, pos[i]] = frame[i]
    return out


def _mask_and_negatives(ours, x, n_neg):
    from wav2vec2.masking import compute_mask
    from wav2vec2.negatives import sample_negative_indices

    g = torch.Generator().manual_seed(3)
    t = int(ours.output_lengths(torch.tensor([x.shape[1]]))[0])
    mask = compute_mask((x.shape[0], t), 0.5, 4, min_masks=2, generator=g)
    m = int(mask[0].sum())
    neg = sample_negative_indices(x.shape[0], m, n_neg, generator=g)
    return mask, neg


@pytest.mark.parametrize("name", list(CONFIGS))
def test_contrastive_and_diversity_loss_match_hf(name):
    ours, hf = _pair(name)
    x = torch.randn(3, 12000, generator=torch.Generator().manual_seed(2)) * 0.3
    n_neg = ours.cfg.num_negatives
    mask, neg = _mask_and_negatives(ours, x, n_neg)
    hf_neg = _to_hf_negatives(neg, mask)
    crit = ContrastiveCriterion(loss_weights=(0.1, 0.0))
    gv = ours.cfg.latent_vars * ours.cfg.latent_groups
    with torch.no_grad():
        out = ours(x, mask_indices=mask, negative_indices=neg)
        _, sample_size, log = crit(out)
        ref = hf(x, mask_time_indices=mask, sampled_negative_indices=hf_neg)
        assert sample_size == int(mask.sum())
        assert abs(log["loss_0"] - float(ref.contrastive_loss)) < 2e-6 * abs(log["loss_0"]) + 1e-4
        # eval mode: HF's diversity uses the hard-code perplexity
        ours_div = (gv - float(out.code_perplexity[0])) / gv * sample_size
        assert abs(ours_div - float(ref.diversity_loss)) < 2e-6 * ours_div + 1e-4
    # training mode (dropouts are 0): HF's diversity uses the softmax perplexity, as ours does
    ours.train()
    hf.train()
    with torch.no_grad():
        out = ours(x, mask_indices=mask, negative_indices=neg)
        ref = hf(x, mask_time_indices=mask, sampled_negative_indices=hf_neg)
        _, _, log = crit(out)
        assert abs(log["loss_1"] - 0.1 * float(ref.diversity_loss)) < 2e-6 * log["loss_1"] + 1e-4
