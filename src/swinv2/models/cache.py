"""Values computed from weights and kept while the weights do not change: the attention's position bias
plus mask (inference) and a Linear's bf16 weight (bf16 inference).

A change of a source tensor shows in its version counter (in-place updates: load_state_dict, most
optimisers' steps, `with torch.no_grad(): w += ...`), its storage address (.to(), a new .data) or its
identity (new Parameters, new buffers after set_input_size); the cache compares all three, and holds the
tensors so that an address cannot be reused by another. PyTorch's fused optimisers (AdamW(fused=True),
the trainer's) update parameters without counting versions, so every optimiser step in the process
also counts (a post-step hook on all torch.optim optimisers). Not seen: writes through `.data`, which
bypass version counters by design."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

optimizer_steps = 0  # steps of any torch.optim optimiser in this process


def count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global optimizer_steps
    optimizer_steps += 1


register_optimizer_step_post_hook(count_optimizer_step)


class TensorCache:
    """One value computed from `sources` (and an `extra` key: dtypes, modes), kept until any of them changes."""

    def __init__(self) -> None:
        self.entry: tuple | None = None  # (the source tensors, their key, the value)

    def get(self, sources: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor],
            extra: tuple = ()) -> torch.Tensor:
        key = (*extra, optimizer_steps,
               *((tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device) for tensor in sources))
        entry = self.entry
        if (entry is None or len(entry[0]) != len(sources) or any(a is not b for a, b in zip(entry[0], sources))
                or entry[1] != key):
            entry = self.entry = (list(sources), key, compute())
        return entry[2]

    def clear(self) -> None:
        self.entry = None

    # A copy of the module has sources of its own: its cache starts empty, and so does a pickled one (a
    # packed oneDNN weight, an opaque tensor, could not be copied or saved anyway).
    def __deepcopy__(self, memo: dict) -> "TensorCache":
        return TensorCache()

    def __getstate__(self) -> dict:
        return {"entry": None}

    @property
    def filled(self) -> bool:
        return self.entry is not None
