"""wav2vec 2.0 model family: configuration, modules, criteria and checkpoint interop."""

from .config import PRESETS, HourglassSpec, Wav2Vec2Config, parse_conv_layers, parse_hourglass, preset
from .model import PretrainingOutput, Wav2Vec2ForCTC, Wav2Vec2Model

__all__ = [
    "Wav2Vec2Config",
    "HourglassSpec",
    "PRESETS",
    "preset",
    "parse_conv_layers",
    "parse_hourglass",
    "Wav2Vec2Model",
    "Wav2Vec2ForCTC",
    "PretrainingOutput",
    "load_model",
]


def load_model(path, **kwargs):
    """Load any supported checkpoint (ours, NVIDIA DLE, fairseq, a HuggingFace directory) in eval mode.
    See :func:`wav2vec2.checkpoint.load_model`."""
    from .checkpoint import load_model as _load

    return _load(path, **kwargs)
