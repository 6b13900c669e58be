"""Effective-rank probe (wav2vec2.probe): hand-computed matrices and the layer hooks of a tiny model."""

import math

import pytest
import torch

from wav2vec2.config import preset
from wav2vec2.model import Wav2Vec2Model
from wav2vec2.probe import effective_rank, layer_effective_ranks


def test_effective_rank_of_k_equal_orthogonal_directions_is_k():
    for k in (1, 3, 7):
        eye = torch.eye(10)[:k]
        rows = torch.cat([eye * 2.0, -eye * 2.0])  # centred already, k equal singular values
        assert effective_rank(rows) == pytest.approx(k, rel=1e-9)


def test_effective_rank_of_unequal_directions_matches_entropy():
    # variances 9 and 1 along two axes (rows +-3 e0, +-1 e1): p = (0.9, 0.1)
    rows = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    p = torch.tensor([0.9, 0.1], dtype=torch.float64)
    expected = math.exp(float(-(p * p.log()).sum()))
    assert effective_rank(rows) == pytest.approx(expected, rel=1e-9)


def test_effective_rank_ignores_the_mean_and_handles_constant_rows():
    line = torch.linspace(-1, 1, 50)[:, None] * torch.tensor([[1.0, 2.0, -1.0]]) + 5.0
    assert effective_rank(line) == pytest.approx(1.0, rel=1e-9)
    assert effective_rank(torch.ones(4, 3)) == 0.0
    with pytest.raises(ValueError):
        effective_rank(torch.ones(2, 3, 4))


def test_layer_effective_ranks_of_a_tiny_model():
    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny"))
    model.train()
    waves = [torch.randn(8000), torch.randn(12000)]
    ranks = layer_effective_ranks(model, waves)
    assert list(ranks) == ["features"] + [f"layer_{i}" for i in range(4)]
    assert all(1.0 < r <= 144 for r in ranks.values())
    assert model.training  # mode restored
    # the last layer's value is the rank of what extract_features returns, computed independently
    model.eval()
    with torch.no_grad():
        outs = [model.extract_features(w[None], None, mask=False)[0][0] for w in waves]
    assert ranks["layer_3"] == pytest.approx(effective_rank(torch.cat(outs)), rel=1e-6)


def test_layer_rank_cli_prints_ranks_and_warns_below_threshold(tiny_corpus, capsys):
    from utils.layer_rank import main

    assert main(["random:tiny", "--data", tiny_corpus, "--subset", "valid", "--utterances", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("random:tiny: effective rank (of 144) features=") and "layer_3=" in out
    assert "WARNING" not in out
    # a random model's top layer is far above 4 but below the width: a threshold of 144 must warn
    assert main(["random:tiny", "--data", tiny_corpus, "--subset", "valid", "--utterances", "2",
                 "--warn_below", "144"]) == 0
    assert "WARNING: random:tiny: the effective rank of " in capsys.readouterr().out


def test_layer_rank_cli_warns_on_a_collapsed_extractor_whose_top_layer_looks_fine(tiny_corpus, capsys, monkeypatch):
    """A pretraining run collapsed by a huge lr leaves constant conv features (rank 0) while the top layer keeps a few
    positional directions (pos_conv edge effects: rank ~5-8); fine-tuning from it stalls (only '|' predicted). The
    warning must follow the lowest rank, here judged by an independent numpy SVD of the features."""
    import numpy as np

    import utils.layer_rank as lr
    from wav2vec2.probe import layer_effective_ranks

    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny"))
    last = len(model.feature_extractor.conv_layers) - 1
    with torch.no_grad():
        for name, p in model.feature_extractor.named_parameters():
            if name.startswith(f"conv_layers.{last}."):
                p.zero_()  # a dead extractor: every frame the same
    monkeypatch.setattr(lr, "_load", lambda spec, seed: model)

    def np_rank(x):
        x = np.asarray(x, dtype=np.float64)
        s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
        if s.sum() <= 1e-20:
            return 0.0
        p = s[s > 0] / s.sum()
        return float(np.exp(-(p * np.log(p)).sum()))

    waves = [torch.randn(16000), torch.randn(24000)]
    with torch.no_grad():
        feats = np.concatenate([model.layer_norm(model._features(w[None], None)[0])[0].numpy() for w in waves])
    assert np_rank(feats) < 4
    assert layer_effective_ranks(model, waves)["layer_3"] >= 4  # what the old last-layer-only check looked at
    assert lr.main(["collapsed.pt", "--data", tiny_corpus, "--subset", "valid", "--utterances", "2",
                    "--warn_below", "4"]) == 0
    out = capsys.readouterr().out
    assert "features=0.0" in out
    assert "WARNING: collapsed.pt: the effective rank of features is 0.0 (below 4)" in out


def test_layer_rank_cli_names_the_manifest_line_of_a_missing_audio_file(tiny_corpus, tmp_path, capsys):
    """Bad input gives one error line and exit status 2: a missing audio file (with its filelist line), a missing
    checkpoint, a missing filelist."""
    import shutil

    from utils.layer_rank import main

    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    lines = (data / "valid.tsv").read_text().splitlines()
    lines[1] = "missing.wav\t" + lines[1].split("\t")[1]  # the first entry now names a file that does not exist
    (data / "valid.tsv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["random:tiny", "--data", str(data), "--subset", "valid", "--utterances", "1"]) == 2
    err = capsys.readouterr().err
    assert "missing.wav" in err and "valid.tsv:2" in err and err.count("\n") == 1
    assert main([str(tmp_path / "nope.pt"), "--data", tiny_corpus, "--subset", "valid"]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert main(["random:tiny", "--data", str(tmp_path / "nodata"), "--subset", "valid"]) == 2
    assert "nodata" in capsys.readouterr().err


def test_layer_rank_cli_rejects_a_non_positive_utterance_count(tiny_corpus):
    from utils.layer_rank import main

    with pytest.raises(SystemExit):
        main(["random:tiny", "--data", tiny_corpus, "--subset", "valid", "--utterances", "0"])
