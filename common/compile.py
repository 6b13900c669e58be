"""``torch.compile`` for training: compile the model's repeated blocks in place.

Compiling each repeated block (the transformer layers) rather than the whole model keeps what inductor gains (the
pointwise work around each matmul fused: bias, GELU, dropout, residual, LayerNorm) and leaves out what it handles
badly: the feature extractor's chunk loops, whose trip counts depend on the input length and would recompile for
every new length, and the data-dependent masking and sampling. ``dynamic=True`` makes the sequence length symbolic,
so the variable-length batches of the bucketed loader reuse one graph; identical blocks share it. ``Module.compile``
works in place, so state-dict keys, checkpoints and DDP are unchanged.
"""

from __future__ import annotations

from typing import Tuple, Type

from torch import nn


def compile_blocks(model: nn.Module, block_types: Tuple[Type[nn.Module], ...], dynamic: bool = True) -> int:
    """``Module.compile(dynamic=dynamic)`` every submodule of ``model`` that is an instance of ``block_types`` (not
    nested inside another such block); returns how many were compiled."""
    count = 0
    skip: set = set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip):
            continue
        if isinstance(module, block_types):
            module.compile(dynamic=dynamic)
            skip.add(name)
            count += 1
    return count
