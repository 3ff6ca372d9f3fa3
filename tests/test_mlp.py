"""The MLP's chunked CPU training step (models/mlp.py, docs/performance.md item 23) against autograd's
step through the same operators: outputs, every gradient, a gradient of a gradient, frozen layers, and
what the backward keeps."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

from swinv2 import SwinTransformerV2
from swinv2.models.mlp import ChunkedMlp, Mlp


def autograd_mlp(x, w1, b1, w2, b2, approximate):
    """The reference: F.linear -> F.gelu -> F.linear, differentiated by autograd."""
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate=approximate), w2, b2)


def parameters(tokens: int, dim: int, hidden: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(tokens, dim), (hidden, dim), (hidden,), (dim, hidden), (dim,)]
    return [(torch.randn(shape, generator=generator, dtype=dtype) * 2).requires_grad_() for shape in shapes]


@pytest.mark.parametrize("rows", [1, 7, 16, 50])  # one row, uneven chunks, even chunks, one chunk
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_chunked_step_matches_autograd_in_float64(rows, approximate):
    inputs = parameters(tokens=48, dim=6, hidden=24, dtype=torch.float64)
    grad = torch.randn(48, 6, dtype=torch.float64)
    expected = autograd_mlp(*inputs, approximate)
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    ours = ChunkedMlp.apply(*inputs, approximate, "aten", rows)
    ours_grads = torch.autograd.grad(ours, inputs, grad)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("x", "w1", "b1", "w2", "b2"), ours_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_gradient_of_the_gradient_goes_through_autograd():
    inputs = parameters(tokens=10, dim=3, hidden=8, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda *t: ChunkedMlp.apply(*t, "none", "aten", 4), inputs)


def test_frozen_layers_get_no_gradient_and_the_rest_the_right_one():
    x, w1, b1, w2, b2 = parameters(tokens=30, dim=4, hidden=16, dtype=torch.float64)
    w1.requires_grad_(False)
    b2.requires_grad_(False)
    grad = torch.randn(30, 4, dtype=torch.float64)
    trainable = (x, b1, w2)
    expected = torch.autograd.grad(autograd_mlp(x, w1, b1, w2, b2, "none"), trainable, grad)
    ours = torch.autograd.grad(ChunkedMlp.apply(x, w1, b1, w2, b2, "none", "aten", 8), trainable, grad)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def saved_hidden_tensors(mlp: Mlp, x: torch.Tensor) -> int:
    """How many (tokens, hidden)-shaped tensors the forward keeps for the backward."""
    hidden_shape = (x.shape[0], mlp.fc1.out_features)
    count = [0]

    def pack(tensor):
        count[0] += tuple(tensor.shape) == hidden_shape
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        mlp(x)
    return count[0]


def test_the_backward_keeps_one_hidden_layer_instead_of_two():
    mlp = Mlp(8, 32, chunk_elements=64)
    x = torch.randn(40, 8, requires_grad=True)
    assert mlp.uses_chunks(x)
    assert saved_hidden_tensors(mlp, x) == 1  # fc1's output alone
    mlp.chunk_elements = 0  # autograd's step: fc1's output for GELU's backward, GELU's for fc2's
    assert saved_hidden_tensors(mlp, x) == 2


def test_hooked_layers_and_dropout_take_autograd_step():
    mlp = Mlp(8, 32, chunk_elements=64)
    x = torch.randn(40, 8, requires_grad=True)
    seen = []
    handle = mlp.fc1.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    assert not mlp.uses_chunks(x)
    mlp(x).sum().backward()
    assert seen == [torch.Size([40, 32])]  # the hook saw fc1 run
    handle.remove()
    dropping = Mlp(8, 32, drop=0.5, chunk_elements=64).train()
    assert not dropping.uses_chunks(x)
    assert dropping.eval().uses_chunks(x)


def test_training_step_of_a_model_matches_autograd_mlps(tiny_config, monkeypatch):
    """A whole model's loss gradients with chunked MLPs (a few rows per chunk, uneven at the end)
    against the same weights with autograd's MLP step."""
    chunked = randomize_(SwinTransformerV2(tiny_config.replace(mlp_chunk_elements=100)))
    reference = SwinTransformerV2(tiny_config.replace(mlp_chunk_elements=0))
    reference.load_state_dict(chunked.state_dict())
    images = torch.randn(2, 3, *tiny_config.img_size, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1])
    calls = []
    apply = ChunkedMlp.apply
    monkeypatch.setattr(ChunkedMlp, "apply", lambda *args: calls.append(args[-1]) or apply(*args))
    for model in (chunked, reference):
        F.cross_entropy(model(images), labels).backward()
    assert len(calls) == sum(tiny_config.depths)  # every block of the chunked model, none of the other
    scale = max(p.grad.abs().max().item() for p in reference.parameters())
    for (name, ours), theirs in zip(chunked.named_parameters(), reference.parameters()):
        assert (ours.grad - theirs.grad).abs().max().item() <= 1e-5 * scale, name
