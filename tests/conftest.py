"""Shared fixtures: a tiny LibriSpeech-style corpus made of tonal audio (no espeak needed) and tiny model flags."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch

# one thread per test process: the CI machine has 2 cores and DDP tests start several processes
torch.set_num_threads(1)

LETTERS = "ABCDE"


def make_corpus(root: str, n_train: int = 16, n_valid: int = 8, seed: int = 0, min_s: float = 0.8,
                max_s: float = 1.6) -> str:
    """<root>/{train,valid}.{tsv,ltr,wrd} + dict.ltr.txt; each word is a letter sequence, each letter a tone."""
    import soundfile as sf  # here, not at the top: the GPU suite runs CUDA tests where soundfile may be missing

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    freqs = {c: 300.0 + 180.0 * i for i, c in enumerate(LETTERS)}
    counts: dict[str, int] = {}
    for split, n in (("train", n_train), ("valid", n_valid)):
        audio_dir = os.path.join(root, split)
        os.makedirs(audio_dir, exist_ok=True)
        tsv = [os.path.abspath(audio_dir)]
        ltr, wrd = [], []
        for i in range(n):
            dur = rng.uniform(min_s, max_s)
            n_samples = int(dur * 16000)
            words = ["".join(rng.choice(list(LETTERS), size=rng.integers(1, 4))) for _ in range(rng.integers(1, 4))]
            letters = [c for c in "|".join(words)]
            seg = n_samples // max(1, len(letters))
            t = np.arange(seg) / 16000.0
            wave = np.concatenate([
                (0.0 if c == "|" else 0.3) * np.sin(2 * np.pi * freqs.get(c, 100.0) * t) for c in letters
            ])
            wave = np.pad(wave, (0, n_samples - len(wave))) + 0.01 * rng.standard_normal(n_samples)
            name = f"utt{i:03d}.flac"
            sf.write(os.path.join(audio_dir, name), wave.astype(np.float32), 16000)
            tsv.append(f"{name}\t{n_samples}")
            ltr.append(" ".join(letters) + " |")
            wrd.append(" ".join(words))
            if split == "train":
                for c in letters + ["|"]:
                    counts[c] = counts.get(c, 0) + 1
        for ext, lines in (("tsv", tsv), ("ltr", ltr), ("wrd", wrd)):
            with open(os.path.join(root, f"{split}.{ext}"), "w") as f:
                f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "dict.ltr.txt"), "w") as f:
        for c, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            f.write(f"{c} {k}\n")
    return root


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> str:
    return make_corpus(str(tmp_path_factory.mktemp("corpus")))


#: a model small enough that a CPU update takes ~0.1 s
MICRO_MODEL = [
    "--preset", "tiny",
    "--conv_feature_layers", "[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2",
    "--encoder_layers", "2", "--encoder_embed_dim", "32", "--encoder_ffn_embed_dim", "64",
    "--encoder_attention_heads", "2", "--conv_pos", "8", "--conv_pos_groups", "4",
    "--final_dim", "16", "--latent_vars", "8", "--num_negatives", "10",
    "--mask_prob", "0.5", "--mask_length", "4",
]


class RecordingLogger:
    """A MetricLogger stand-in for trainer tests: keeps every ``(step, data)`` record in ``records``."""

    def __init__(self):
        self.records = []

    def log(self, step, data):
        self.records.append((step, dict(data)))

    def flush(self):
        pass



@contextlib.contextmanager
def gloo_worker(rank: int, port: int, world_size: int = 2):
    """One rank of a gloo test group, one thread. The body runs in the group; when it succeeds the ranks meet at a
    barrier (none tears the group down while another still uses it, as common.distributed.shutdown does), the group
    is destroyed and the process ends at once, without interpreter finalisation: gloo's threads sometimes abort a
    process at exit ("terminate called without an active exception", SIGABRT) after all its work is done (3 times in
    about 10 suite runs of the eighth session, on a loaded and on a quiet machine), which failed the spawning test
    though its results were complete. When the body fails, the group is destroyed and the error propagates.

    The cause: a group still referenced after destroy_process_group (torch.distributed.nn.functional's
    ``group=group.WORLD`` defaults, when a torch optimizer imports it after the group exists) keeps gloo's threads
    into finalisation. As init_distributed does, that module is imported before the group; the early exit stays as a
    second guard."""
    import sys

    import torch.distributed as dist

    from common.distributed import _import_group_capturing_modules

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _import_group_capturing_modules()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
