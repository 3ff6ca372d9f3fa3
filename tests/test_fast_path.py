"""Issue 7, the fast path: attention through F.scaled_dot_product_attention ("sdpa") against the reference
matmul + softmax ("plain"), forward and gradients, and the cached position bias against a fresh computation
after everything that can change it. Every parameter is random (conftest.randomize_)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from conftest import TINY_ARCHITECTURE, TINY_CLASSES, randomize_

from swinv2 import SwinTransformerV2, SwinV2Config
from swinv2.models import blocks as blocks_module
from swinv2.models.attention import ScaledUnitVectors, WindowAttention
from swinv2.models.linear import onednn_available
from swinv2.models.windows import TokenPermutation, permute_tokens, window_order
from swinv2.train.config import OptimSection
from swinv2.train.optim import build_optimizer

CASES = {
    # TINY: shifted stages 0 and 1, an unshifted stage 2 (map = window), a clamped stage 3 (2x2 map, window 2).
    "shifted-and-clamped": {},
    # 72 px: every map padded to whole windows, padding masked (shifted blocks get shift + padding masks).
    "padding": {"strict_img_size": False},
    # Chunks of 3 windows: not a multiple of the 16 or 4 windows of an image, so chunks straddle images.
    "chunked": {"attention_chunk_size": 3},
    # A window of 3 on 16x16 and 8x8 maps: windows 3x3 with padding, stage 2 4x4 map padded to 6x6.
    "odd-window": {"window_size": 3, "strict_img_size": False},
}
SIZES = {"padding": 72, "odd-window": 64}


def pair(case: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[SwinTransformerV2, SwinTransformerV2]:
    """The same random weights in a plain and an sdpa model, in eval mode."""
    config = SwinV2Config(**{**TINY_ARCHITECTURE, **CASES[case]}, num_classes=TINY_CLASSES, drop_path_rate=0.0)
    plain = randomize_(SwinTransformerV2(config.replace(attention_impl="plain")), seed=seed).to(dtype).eval()
    fast = SwinTransformerV2(config.replace(attention_impl="sdpa")).to(dtype).eval()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def images(case: str, batch: int = 3, dtype: torch.dtype = torch.float32, seed: int = 7) -> torch.Tensor:
    size = SIZES.get(case, 64)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str) -> None:
    """|actual - expected| <= tolerance * max|expected|, elementwise."""
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= tolerance * max(scale, 1e-12), f"{what}: max error {error:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("case", CASES)
def test_sdpa_forward_and_gradients_match_plain_in_fp32(case):
    plain, fast = pair(case)
    x = images(case)
    projection = torch.randn(x.shape[0], TINY_CLASSES, generator=torch.Generator().manual_seed(3))
    outputs = {}
    for name, model in (("plain", plain), ("sdpa", fast)):
        pixels = x.clone().requires_grad_(True)
        logits = model(pixels)
        (logits * projection).sum().backward()
        outputs[name] = logits.detach(), pixels.grad, {n: p.grad for n, p in model.named_parameters()}
    (logits_plain, pixels_plain, grads_plain), (logits_fast, pixels_fast, grads_fast) = outputs.values()
    assert_close_to_scale(logits_fast, logits_plain, 1e-5, "logits")
    assert_close_to_scale(pixels_fast, pixels_plain, 1e-5, "input gradient")
    # Parameter gradients relative to the model's largest: a parameter with tiny gradients has only rounding.
    largest = max(grad.abs().max().item() for grad in grads_plain.values())
    for name, grad in grads_plain.items():
        error = (grads_fast[name] - grad).abs().max().item()
        assert error <= 1e-5 * largest, f"gradient of {name}: max error {error:.3g}, largest gradient {largest:.3g}"
    with torch.no_grad():  # the cached path
        assert_close_to_scale(fast(x), plain(x), 1e-5, "logits under no_grad")


def test_sdpa_equals_plain_in_float64_to_rounding():
    plain, fast = pair("shifted-and-clamped", dtype=torch.float64)
    x = images("shifted-and-clamped", dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-12, atol=1e-12)


def test_auto_uses_sdpa_for_cpu_fp32_inference_on_windows_over_64_tokens_and_plain_otherwise(tiny_config):
    attention = SwinTransformerV2(tiny_config).layers[0].blocks[1].attn
    assert attention.attention_impl == "auto"
    x = torch.zeros(2, 144, tiny_config.embed_dim)  # windows of 12x12 tokens
    with torch.no_grad():
        assert attention.use_sdpa(x)
        assert not attention.use_sdpa(x[:, :64])  # 8x8 and smaller: the plain path measured faster
    assert not attention.use_sdpa(x)  # grad enabled, the bias needs its gradient
    attention.cpb_mlp.requires_grad_(False)
    assert attention.use_sdpa(x)  # frozen CPB MLP: the mask needs no gradient
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not attention.use_sdpa(x)  # bf16 on the CPU: the plain path measured faster
    assert not attention.use_sdpa(x.to("meta"))  # FLOP counting on meta runs the reference


@pytest.mark.parametrize("windows,num_masks", [(6, 1), (6, 6), (6, 3)])
def test_inference_logits_written_in_place_equal_softmax_of_the_sum(windows, num_masks):
    """Without autograd the plain path adds the bias to q k^T and takes the softmax in place: the same numbers
    as softmax(q k^T + bias) @ v computed out of place, for one mask, one per window, and masks that repeat
    every few windows (several images)."""
    attention = WindowAttention(dim=8, window_size=(4, 4), num_heads=2, attention_impl="plain").eval()
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(windows, 2, 16, 4, generator=generator) for _ in range(3))
    bias = torch.randn(num_masks, 2, 16, 16, generator=generator)
    logits = (q @ k.transpose(-2, -1)).view(-1, num_masks, 2, 16, 16) + bias
    expected = (logits.view(windows, 2, 16, 16).softmax(-1) @ v).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(attention.attend_plain(q, k, v, bias), expected, rtol=0, atol=0)
    q.requires_grad_(True)  # with a gradient to record: the out-of-place formula, the same numbers
    torch.testing.assert_close(attention.attend_plain(q, k, v, bias).detach(), expected, rtol=0, atol=0)


def test_auto_matches_plain_in_training_and_inference(tiny_config):
    plain = randomize_(SwinTransformerV2(tiny_config.replace(attention_impl="plain")))
    auto = copy.deepcopy(plain)
    for module in auto.modules():
        if isinstance(module, WindowAttention):
            module.attention_impl = "auto"
    x = images("shifted-and-clamped")
    torch.testing.assert_close(auto(x), plain(x), rtol=0, atol=0)  # training: auto is the plain path
    with torch.no_grad():
        assert_close_to_scale(auto.eval()(x), plain.eval()(x), 1e-5, "eval")


def test_unknown_attention_impl_is_refused():
    with pytest.raises(ValueError, match="attention_impl"):
        SwinV2Config(attention_impl="flash")


# ------------------------------------------------------------------------------- the cached bias
def fresh_plain(model: SwinTransformerV2) -> SwinTransformerV2:
    """An independent plain model with `model`'s configuration and current weights: no cache to be stale."""
    reference = SwinTransformerV2(model.config.replace(attention_impl="plain")).to(next(model.parameters()).dtype)
    reference.load_state_dict(model.state_dict())
    return reference.eval()


def count_bias_computations(monkeypatch) -> list[int]:
    calls = [0]
    original = WindowAttention.position_bias

    def counting(self):
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(WindowAttention, "position_bias", counting)
    return calls


def test_bias_is_computed_once_in_inference(tiny_config, monkeypatch):
    model = randomize_(SwinTransformerV2(tiny_config.replace(attention_impl="sdpa"))).eval()
    calls = count_bias_computations(monkeypatch)
    x = images("shifted-and-clamped")
    with torch.no_grad():
        first = model(x)
        blocks = calls[0]
        assert blocks == sum(tiny_config.depths)
        second = model(x)
    assert calls[0] == blocks  # the second pass reused every block's bias
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    model(x).sum().backward()  # grad enabled: recomputed in the graph, never the cached tensor
    assert calls[0] == 2 * blocks
    assert model.layers[0].blocks[0].attn.cpb_mlp[0].weight.grad is not None


def test_cache_follows_load_state_dict(tiny_config):
    model = randomize_(SwinTransformerV2(tiny_config.replace(attention_impl="sdpa")), seed=0).eval()
    other = randomize_(SwinTransformerV2(tiny_config), seed=1)
    x = images("shifted-and-clamped")
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(other.state_dict())
        after = model(x)
        assert (after - before).abs().max() > 1e-2
        assert_close_to_scale(after, fresh_plain(model)(x), 1e-5, "after load_state_dict")


@pytest.mark.parametrize("kind", ["for-loop", "foreach", "fused", "the trainer's"])
def test_cache_follows_an_optimizer_step_and_in_place_edits(tiny_config, kind):
    """After an optimiser step of each of AdamW's implementations, the trainer's own (fused) among them,
    and after an in-place edit, the cached model computes what a model built from its weights does."""
    model = randomize_(SwinTransformerV2(tiny_config.replace(attention_impl="sdpa")))
    if kind == "the trainer's":
        optimizer = build_optimizer(model, OptimSection(weight_decay=0.0, layer_decay=None), lr=0.05)
    else:
        implementation = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, **implementation[kind])
    x = images("shifted-and-clamped")
    model.eval()
    with torch.no_grad():
        model(x)  # fills the cache
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.arange(3)).backward()
    optimizer.step()  # moves every CPB MLP weight by about lr
    model.eval()
    with torch.no_grad():
        assert_close_to_scale(model(x), fresh_plain(model)(x), 1e-5, "after an optimizer step")
        model.layers[1].blocks[1].attn.cpb_mlp[2].weight.mul_(-1.0)  # in place, as a user or EMA would
        assert_close_to_scale(model(x), fresh_plain(model)(x), 1e-5, "after an in-place edit")


def test_cache_follows_dtype_and_set_input_size(tiny_config):
    model = randomize_(SwinTransformerV2(tiny_config.replace(attention_impl="sdpa"))).eval()
    x = images("shifted-and-clamped")
    with torch.no_grad():
        model(x)
        model.double()
        torch.testing.assert_close(model(x.double()), fresh_plain(model)(x.double()), rtol=1e-10, atol=1e-10)
        model.float()
        model.set_input_size(img_size=128, window_size=8)  # new windows, tables, indices and masks
        large = images("shifted-and-clamped").repeat(1, 1, 2, 2)
        assert_close_to_scale(model(large), fresh_plain(model)(large), 1e-5, "after set_input_size")


def test_masks_are_built_once_per_size(monkeypatch):
    config = SwinV2Config(**TINY_ARCHITECTURE, num_classes=TINY_CLASSES, drop_path_rate=0.0, strict_img_size=False)
    model = randomize_(SwinTransformerV2(config)).eval()
    built = [0]
    original = blocks_module.window_attention_mask

    def counting(*args):
        built[0] += 1
        return original(*args)

    monkeypatch.setattr(blocks_module, "window_attention_mask", counting)
    with torch.no_grad():
        model(images("shifted-and-clamped"))  # the configured size: the blocks' buffers
        assert built[0] == 0
        model(images("padding"))  # another size: one mask per block
        assert built[0] == sum(TINY_ARCHITECTURE["depths"])
        model(images("padding"))
        assert built[0] == sum(TINY_ARCHITECTURE["depths"])


class TensorsOfSize(TorchDispatchMode):
    """Names the operators that make a new tensor of `numel` elements (views of their inputs not counted)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.made = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if isinstance(output, torch.Tensor) and output.numel() == self.numel:
            inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor) and not t.is_mkldnn}  # a packed weight has no storage
            if output.untyped_storage().data_ptr() not in inputs:
                self.made.append(func.overloadpacket.__name__)
        return output


def test_qkv_gradient_is_assembled_once_in_the_linear_layout():
    """The backward of attention needs the gradient of the (windows * N, 3C) qkv output once, as the matrix
    the qkv linear's backward multiplies; stacking q, k, v's gradients heads-first and copying them into that
    layout would make it twice (an extra copy of the block's widest activation, 37.7 MB per stage-0 block of
    SwinV2-T at batch 8)."""
    windows, tokens, channels = 6, 16, 12
    attention = randomize_(WindowAttention(channels, (4, 4), num_heads=3, attention_impl="plain"))
    x = torch.randn(windows, tokens, channels, requires_grad=True)
    output = attention(x)
    counter = TensorsOfSize(windows * tokens * 3 * channels)
    with counter:
        output.backward(torch.randn_like(output))
    assert counter.made == ["stack"], counter.made


@pytest.mark.parametrize(("linear_impl", "product"), [("aten", "addmm"), ("onednn", "_linear_pointwise")])
def test_mlp_makes_one_hidden_buffer_without_autograd(linear_impl, product):
    """Inference computes GELU over fc1's output in place (one (tokens, rC) tensor, not two); with autograd
    GELU's backward needs its input, so it gets a tensor of its own. Both equal fc2(gelu(fc1(x))), exactly
    where the layers are F.linear (oneDNN's products round differently: models/linear.py)."""
    if linear_impl == "onednn" and not onednn_available():
        pytest.skip("this PyTorch has no oneDNN")
    mlp = blocks_module.Mlp(8, 32)
    for layer in (mlp.fc1, mlp.fc2):
        layer.impl = linear_impl
    x = torch.randn(5, 8)
    expected = torch.nn.functional.linear(
        torch.nn.functional.gelu(torch.nn.functional.linear(x, mlp.fc1.weight, mlp.fc1.bias)),
        mlp.fc2.weight, mlp.fc2.bias)
    tolerance = 0 if linear_impl == "aten" else 1e-6
    for grad, made in ((False, [product]), (True, [product, "gelu"])):
        counter = TensorsOfSize(5 * 32)
        with torch.set_grad_enabled(grad), counter:
            output = mlp(x)
        assert counter.made == made, (grad, counter.made)
        torch.testing.assert_close(output, expected, rtol=tolerance, atol=tolerance)


def test_sdpa_of_one_image_matches_plain_without_a_fold():
    """One image's windows line up with the shift masks, so the fused kernel takes q, k, v as they are:
    batch 1, and the CPU's inference chunks of one image (here stage 0's 16x16 map with
    inference_chunk_tokens=256); q keeps the tokens-first order of the qkv product, which the kernel's
    output follows, so nothing is copied. Several images fold their windows into the heads: q and k are
    written contiguous by their normalisation, the layout the fold needs, v is copied, and the output
    once back to tokens first."""
    plain, fast = pair("shifted-and-clamped")
    x = images("shifted-and-clamped", batch=1)
    for model in (plain, fast):
        model.zero_grad()
        model(x).square().sum().backward()
    assert_close_to_scale(fast(x), plain(x), 1e-5, "logits of one image")
    largest = max(p.grad.abs().max().item() for p in plain.parameters())
    for (name, expected), actual in zip(plain.named_parameters(), fast.parameters()):
        assert (actual.grad - expected.grad).abs().max().item() <= 1e-5 * largest, name
    chunked = SwinTransformerV2(fast.config.replace(inference_chunk_tokens=256)).eval()
    chunked.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert_close_to_scale(chunked(images("shifted-and-clamped")), plain(images("shifted-and-clamped")), 1e-5,
                              "one-image chunks")

    channels, heads, windows_per_image, tokens = 12, 3, 4, 16
    attention = randomize_(WindowAttention(channels, (4, 4), num_heads=heads, attention_impl="sdpa")).eval()
    mask = torch.zeros(windows_per_image, tokens, tokens).masked_fill_(torch.rand(windows_per_image, tokens, tokens) < 0.3, -100.0)
    for images_in_call, copies in ((1, []), (2, ["clone"] * 2)):  # v and the output back
        windows = images_in_call * windows_per_image
        x, counter = torch.randn(windows, tokens, channels), TensorsOfSize(windows * tokens * channels)
        with torch.no_grad(), counter:
            attention(x, mask)
        made = [name for name in counter.made if name in ("clone", "copy", "_to_copy", "contiguous")]
        assert made == copies, (images_in_call, counter.made)


def test_scaled_unit_vectors_gradients_against_finite_differences():
    """The closed-form backward of q and k's normalisation: gradcheck compares it (and, differentiating the
    backward, its own gradient) with finite differences in float64; a zero and a tiny vector, which the norm
    clamps, against autograd through torch's F.normalize, to the second derivative."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=generator).requires_grad_(True)
    scale = (torch.rand(3, 1, 1, dtype=torch.float64, generator=generator) + 0.5).requires_grad_(True)
    for arguments in ((x, scale), (x, None)):
        assert torch.autograd.gradcheck(ScaledUnitVectors.apply, arguments)
        assert torch.autograd.gradgradcheck(ScaledUnitVectors.apply, arguments)
    clamped = x.detach().clone()
    clamped[0, 0, 0], clamped[1, 2, 3] = 0.0, clamped[1, 2, 3] * 1e-14
    grad = torch.randn(clamped.shape, dtype=torch.float64, generator=generator)
    results = []
    direction = torch.randn(clamped.shape, dtype=torch.float64, generator=generator)
    for function in (ScaledUnitVectors.apply,
                     lambda v, s: torch.nn.functional.normalize(v, dim=-1, eps=1e-12) * s):
        inputs = (clamped.clone().requires_grad_(True), scale.detach().clone().requires_grad_(True))
        output = function(*inputs)
        first = torch.autograd.grad(output, inputs, grad, create_graph=True)
        # The backward's own gradient (create_graph), which must stay finite at the zero vector too.
        second = torch.autograd.grad((first[0] * direction).sum(), inputs)
        results.append((output, *first, *second))
    # Below eps the function is x * scale / eps, linear in x: its second derivative in x is 0 there, which
    # is the expected value at the zero vector, where F.normalize's own is nan (the root's slope at 0).
    results[1][3][0, 0, 0] = 0.0
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-15)


def test_scaled_unit_vectors_backward_makes_two_tensors_of_x_size():
    """<g, x> and g * f, then x's term added in place: autograd's own backward of the norm, the quotient and
    the product made five."""
    x = torch.randn(4, 3, 16, 8, requires_grad=True)
    scale = torch.rand(3, 1, 1, requires_grad=True)
    output = ScaledUnitVectors.apply(x, scale)
    grad, counter = torch.randn_like(output), TensorsOfSize(x.numel())
    with counter:
        output.backward(grad)
    assert len(counter.made) == 2, counter.made


@pytest.mark.parametrize("resolution, window, shifted", [((7, 7), (7, 7), False), ((4, 4), (4, 4), True),
                                                         ((8, 4), (4, 4), False), ((6, 5), (3, 5), False)])
def test_blocks_skip_the_gather_only_where_the_window_order_is_the_identity(resolution, window, shifted):
    """A block whose windows are whole rows of the map, unshifted, attends without the token gather; the
    general `window_order` must agree that its order is the map's own (and the window of one clamps the shift)."""
    block = blocks_module.SwinTransformerV2Block(8, resolution, 2, window, shifted=shifted)
    assert block.token_order is None and block.token_order_inverse is None
    order = blocks_module.window_order(resolution, block.window_size, block.shift_size)
    assert torch.equal(order, torch.arange(resolution[0] * resolution[1]))
    shifted_block = blocks_module.SwinTransformerV2Block(8, (8, 8), 2, (4, 4), shifted=True)
    assert shifted_block.token_order is not None
    assert not torch.equal(shifted_block.token_order, torch.arange(64))

# --------------------------------------------------------------------------------- bf16 and graphs
def test_bf16_autocast_stays_finite_and_close(tiny_config):
    """Large activations and the temperature at its clamp: normalisation in fp32, softmax accumulated in fp32."""
    plain, fast = pair("shifted-and-clamped")
    with torch.no_grad():
        for model in (plain, fast):
            for name, parameter in model.named_parameters():
                if name.endswith("logit_scale"):
                    parameter.fill_(10.0)  # clamped to ln 100: logits up to +-100
    x = 1e3 * images("shifted-and-clamped")
    with torch.no_grad():
        reference = plain(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_plain, low_fast = plain(x).float(), fast(x).float()
    assert torch.isfinite(low_fast).all()
    # bf16 keeps 8 bits: compare with the fp32 result at the error the plain path itself has in bf16.
    plain_error = (low_plain - reference).abs().max().item()
    fast_error = (low_fast - reference).abs().max().item()
    assert fast_error <= 2 * plain_error + 1e-2 * reference.abs().max().item(), (fast_error, plain_error)


def test_bf16_training_step_through_sdpa_is_finite(tiny_config):
    model = randomize_(SwinTransformerV2(tiny_config.replace(attention_impl="sdpa")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(images("shifted-and-clamped")), torch.arange(3))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_export_of_the_sdpa_path_with_dynamic_batch(tiny_config):
    # Chunks of one image in inference (inference_chunk_tokens): a symbolic batch must run whole.
    model = randomize_(SwinTransformerV2(tiny_config.replace(attention_impl="sdpa", inference_chunk_tokens=1))).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.export.export(model, (images("shifted-and-clamped", batch=2),), dynamic_shapes={"x": {0: batch}})
        x = images("shifted-and-clamped", batch=5)
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_fullgraph_of_the_sdpa_path(tiny_config):
    model = randomize_(SwinTransformerV2(tiny_config.replace(attention_impl="sdpa"))).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    x = images("shifted-and-clamped")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_fullgraph_training_gradients_match_eager(tiny_config):
    """Training compiled as one graph, ScaledUnitVectors' hand-written backward and the linear layers'
    oneDNN operator (models/linear.py, where this PyTorch has oneDNN) included, gives the gradients autograd
    gives the plain model with F.linear eagerly, with drop path off so both compute one function."""
    # Two stages (a shifted block in the first) keep the compilation of forward and backward short.
    small = tiny_config.replace(depths=(2, 1), num_heads=(1, 2), attention_impl="plain", drop_path_rate=0.0,
                                linear_impl="aten")
    plain = randomize_(SwinTransformerV2(small)).train()
    model = SwinTransformerV2(plain.config.replace(attention_impl="auto",
                                                   linear_impl="onednn" if onednn_available() else "aten"))
    model.load_state_dict(plain.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(model.train(), fullgraph=True)
    x = images("shifted-and-clamped")
    for network in (plain, compiled):
        network(x).square().mean().backward()
    largest = max(p.grad.abs().max().item() for p in plain.parameters())
    for (name, expected), actual in zip(plain.named_parameters(), model.parameters()):
        error = (actual.grad - expected.grad).abs().max().item()
        assert error <= 1e-5 * largest, f"gradient of {name}: max error {error:.3g}, largest gradient {largest:.3g}"


def test_token_permutation_gradient_is_the_inverse_gather():
    """permute_tokens' backward (a gather by the inverse order) against autograd's index_select backward
    (zeros, then a scatter-add), for a block's own roll-and-partition order; and its own backward again."""
    order = window_order((8, 8), (4, 4), (2, 2))
    inverse = torch.argsort(order)
    x = torch.randn(2, 64, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 64, 5, dtype=torch.float64)
    ours = permute_tokens(x, order, inverse)
    torch.testing.assert_close(ours, x.index_select(1, order), rtol=0, atol=0)
    (expected,) = torch.autograd.grad(x.index_select(1, order), x, grad)
    (found,) = torch.autograd.grad(ours, x, grad)
    torch.testing.assert_close(found, expected, rtol=0, atol=0)
    assert torch.autograd.gradgradcheck(lambda t: TokenPermutation.apply(t, order, inverse), (x,))
