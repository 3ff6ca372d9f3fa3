"""Item 18: the linear layers through oneDNN (models/linear.py) compute F.linear, forward and gradients, and
the model with them computes what the model with F.linear does; where they fall back; the "auto" rule."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

from swinv2 import SwinTransformerV2
from swinv2.errors import ConfigError
from swinv2.models import linear as linear_module
from swinv2.models.linear import Linear, linear, onednn_available, uses_onednn

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN (not x86 or aarch64)")

TINY = {"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "num_classes": 5,
        "drop_path_rate": 0.0}


def gradients(function, *tensors):
    """The output, and the gradients of a loss that weighs each output element differently (its weights
    drawn from a fixed seed: the same for both functions compared)."""
    output = function(*tensors)
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(10))
    grads = torch.autograd.grad((output * weights).sum(), [t for t in tensors if t is not None and t.requires_grad])
    return output, grads


@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24), (2, 3, 4, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_is_f_linear_forward_and_gradients(shape, with_bias):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(40, 24, requires_grad=True)
    bias = torch.randn(40, requires_grad=True) if with_bias else None
    expected, expected_grads = gradients(lambda *t: F.linear(*t), x, weight, bias)
    got, got_grads = gradients(lambda *t: linear(*t, impl="onednn"), x, weight, bias)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(got_grads) == (3 if with_bias else 2)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_onednn_linear_takes_strided_inputs_and_partial_gradients():
    """A transposed input (the attention's output reaches proj strided) and a frozen weight: only the input's
    gradient is asked for and computed; and a frozen input: only the weight's and bias's."""
    torch.manual_seed(1)
    x = torch.randn(24, 9).t().requires_grad_()  # (9, 24), not contiguous
    weight, bias = torch.randn(16, 24), torch.randn(16)
    expected, (expected_grad,) = gradients(lambda a: F.linear(a, weight, bias), x)
    got, (got_grad,) = gradients(lambda a: linear(a, weight, bias, impl="onednn"), x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-5)

    frozen_input = torch.randn(9, 24)
    weight.requires_grad_(), bias.requires_grad_()
    _, expected_grads = gradients(lambda w, b: F.linear(frozen_input, w, b), weight, bias)
    _, got_grads = gradients(lambda w, b: linear(frozen_input, w, b, impl="onednn"), weight, bias)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_onednn_output_can_be_modified_in_place_under_autograd():
    """The position-bias MLP's ReLU is in place on a Linear's output: allowed, and the gradient still right."""
    torch.manual_seed(3)
    x = torch.randn(6, 8, requires_grad=True)
    layer = Linear(8, 8)
    layer.impl = "onednn"
    relu = torch.nn.ReLU(inplace=True)
    got = torch.autograd.grad(relu(layer(x)).sum(), x)[0]
    expected = torch.autograd.grad(F.relu(F.linear(x, layer.weight, layer.bias)).sum(), x)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_onednn_is_used_for_fp32_cpu_outside_autocast():
    weight = torch.randn(4, 4)
    assert uses_onednn(torch.randn(2, 4), weight, "onednn")
    assert not uses_onednn(torch.randn(2, 4), weight, "aten")
    assert not uses_onednn(torch.randn(2, 4, dtype=torch.float64), weight.double(), "onednn")
    assert not uses_onednn(torch.randn(2, 4, device="meta"), weight.to("meta"), "onednn")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(torch.randn(2, 4), weight, "onednn")
        # and the result is autocast's: a bf16 product
        assert linear(torch.randn(2, 4), weight, None, "onednn").dtype == torch.bfloat16


@pytest.mark.parametrize(("vendor", "capability", "expected"), [
    ("AuthenticAMD", "AVX512", True),  # Zen 4: MKL runs no AVX-512 kernel there (docs/performance.md)
    ("AuthenticAMD", "AVX2", False),  # Zen 3: the two measured the same
    ("GenuineIntel", "AVX512", False),
    ("", "AVX512", False),
])
def test_auto_picks_onednn_on_amd_avx512_only(monkeypatch, vendor, capability, expected):
    monkeypatch.setattr(linear_module, "_prefers_onednn", [])  # the answer is asked again, then restored
    monkeypatch.setattr(linear_module, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert linear_module.cpu_prefers_onednn() is expected
    assert uses_onednn(torch.randn(2, 4), torch.randn(4, 4), "auto") is expected


@pytest.mark.parametrize("shape", [(6, 24), (2, 3, 24)])
def test_output_with_autograd_is_not_a_view_and_edits_in_place_keep_f_linears_gradients(shape):
    """With autograd the result is a tensor of its own, not a view of the kernel's 2-D one: FSDP2 warned that
    a model whose head returned such a view "returned a view tensor" (in-place edits of a view skip its
    hooks). An in-place edit of it then gives F.linear's gradients."""
    torch.manual_seed(8)
    x = torch.randn(*shape, requires_grad=True)
    weight, bias = torch.randn(12, 24, requires_grad=True), torch.randn(12, requires_grad=True)
    gradients = []
    for name, product in (("onednn", lambda: linear(x, weight, bias, "onednn")), ("F.linear", lambda: F.linear(x, weight, bias))):
        y = product()
        if name == "onednn":
            assert not y._is_view()
        y.mul_(2.0).relu_()
        gradients.append(torch.autograd.grad(y.square().sum(), (x, weight, bias)))
    for ours, reference in zip(*gradients):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["inference", "bf16 inference", "training"])
def test_model_with_onednn_linears_matches_the_model_with_f_linear(mode):
    """Every Linear of the model (qkv, proj, MLP, merging, head, CPB MLP) through oneDNN: the same logits and
    parameter gradients as through F.linear, in inference (chunked, no autograd), in bf16 inference (from the
    kept bf16 weights; autocast's F.linear rounds the same operands) and in training."""
    torch.manual_seed(4)
    reference = randomize_(SwinTransformerV2(**TINY, linear_impl="aten"))
    model = SwinTransformerV2(**TINY, linear_impl="onednn")
    model.load_state_dict(reference.state_dict())
    assert {m.impl for m in model.modules() if isinstance(m, Linear)} == {"onednn"}
    images = torch.randn(3, 3, 32, 32)
    if mode != "training":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16 inference"):
            actual, expected = model.eval()(images), reference.eval()(images)
        tolerance = 1e-5 if mode == "inference" else 2**-7  # bf16: the sums' order may differ, a rounding apart
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)
        assert all(m.packed_cache.filled for m in model.modules() if isinstance(m, Linear))
        model.train()  # training again drops every packed copy
        assert not any(m.packed_cache.filled for m in model.modules() if isinstance(m, Linear))
        return
    outputs = []
    for net in (reference.train(), model.train()):
        logits = net(images)
        F.cross_entropy(logits, torch.tensor([0, 2, 4])).backward()
        outputs.append(logits)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(reference.named_parameters(), model.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_set_linear_impl_switches_every_layer_and_checks_the_name():
    model = SwinTransformerV2(**TINY)
    model.set_linear_impl("aten")
    assert model.config.linear_impl == "aten"
    assert {m.impl for m in model.modules() if isinstance(m, Linear)} == {"aten"}
    with pytest.raises(ConfigError, match="linear_impl must be 'auto', 'aten' or 'onednn'"):
        model.set_linear_impl("mkl")


def test_onednn_without_onednn_is_a_config_error(monkeypatch):
    from swinv2.models import config as config_module
    monkeypatch.setattr(config_module, "onednn_available", lambda: False)
    with pytest.raises(ConfigError, match="use 'auto' or 'aten'"):
        SwinTransformerV2(**TINY, linear_impl="onednn")


def test_a_second_copy_of_the_module_imports_and_flops_are_counted_once():
    """`benchmarks/against_revision.py` imports another revision's copy of the package beside this one: the
    module's FLOP formula for oneDNN's linear must not be registered twice (a RuntimeError). FlopCounterMode
    then counts the product by hand's count, 2 * tokens * in * out."""
    import importlib.util

    # A module of the installed package's models (its relative imports resolve there), from the same file.
    spec = importlib.util.spec_from_file_location("swinv2.models.linear_second_copy", linear_module.__file__)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    x, weight = torch.randn(6, 5, 24), torch.randn(12, 24)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        linear(x, weight, None, "onednn")
    assert counter.get_total_flops() == 2 * 30 * 24 * 12


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inference_is_the_product_of_the_rounded_operands_from_a_weight_kept_until_it_changes(precision):
    """In eval mode without autograd, Linear("onednn") computes what F.linear does, in fp32 (checked against
    float64) and under the CPU's bf16 autocast (x, weight and bias rounded to bf16 and multiplied with fp32
    sums, by hand here), from a packed weight it makes once and makes again after any change of the weight:
    in place, a fused optimiser's step, replaced, loaded. With autograd, or in training mode, it keeps
    nothing, and `train()` drops what it kept."""
    torch.manual_seed(5)
    layer = Linear(24, 12).eval()
    layer.impl = "onednn"
    x = torch.randn(3, 7, 24)
    bf16 = precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    tolerance = dict(rtol=2**-8, atol=1e-6) if bf16 else dict(rtol=1e-6, atol=1e-6)

    def by_hand():
        if not bf16:
            return (x.double() @ layer.weight.detach().double().T + layer.bias.detach().double()).float()
        rounded = (t.detach().to(torch.bfloat16).float() for t in (x, layer.weight, layer.bias))
        x16, weight16, bias16 = rounded
        return (x16 @ weight16.T + bias16).to(torch.bfloat16)

    def inference_call():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return layer(x)

    output = inference_call()
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), by_hand().float(), **tolerance)
    kept = layer.packed_weight(dtype)
    assert kept.is_mkldnn and kept.dtype == dtype  # packed in oneDNN's layout
    inference_call()
    assert layer.packed_weight(dtype) is kept  # unchanged weight: made once

    def in_place():
        with torch.no_grad():
            layer.weight.mul_(-2.0)

    def fused_step():  # the trainer's optimiser, which counts no versions
        layer.weight.grad, layer.bias.grad = torch.randn(12, 24), torch.randn(12)
        torch.optim.AdamW(layer.parameters(), lr=0.5, fused=True).step()

    changes = (in_place, fused_step,
               lambda: setattr(layer, "weight", torch.nn.Parameter(torch.randn(12, 24))),  # replaced
               lambda: layer.load_state_dict({"weight": torch.randn(12, 24), "bias": torch.randn(12)}))
    for change in changes:
        change()
        torch.testing.assert_close(inference_call().float(), by_hand().float(), **tolerance)
    # Copied and saved with something kept (the packed weight is an opaque tensor): the copies start empty.
    twin = copy.deepcopy(layer)
    assert not twin.packed_cache.filled
    torch.save(layer, io.BytesIO())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        assert torch.equal(twin(x), inference_call())
    layer.train()
    assert not layer.packed_cache.filled  # training again drops it
    fresh = Linear(24, 12)
    fresh.impl = "onednn"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        assert fresh(x).requires_grad  # training: autocast's own F.linear (or the operator), with its gradient
    with torch.no_grad():
        fresh(x)  # training mode: no copy for weights that are about to change
    fresh.eval()
    fresh(x)  # autograd records: nothing kept either
    assert not fresh.packed_cache.filled


def test_the_gradient_of_the_input_gradient_is_f_linears():
    """The operator's backward is made of operators that have gradients (itself and torch.mm), so a loss on
    a gradient (a gradient penalty) is differentiated again, as through F.linear."""
    torch.manual_seed(7)
    x = torch.randn(9, 24, requires_grad=True)
    weight, bias = torch.randn(16, 24, requires_grad=True), torch.randn(16, requires_grad=True)
    upstream = torch.randn(9, 16)

    def second_gradient(function):
        (grad_x,) = torch.autograd.grad((function(x, weight, bias) * upstream).sum(), x, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), weight)[0]

    torch.testing.assert_close(second_gradient(lambda *t: linear(*t, impl="onednn")), second_gradient(F.linear),
                               rtol=1e-5, atol=1e-4)


def compiled_with_graphs(function):
    """`function` under torch.compile, and the list its forward and backward graphs (torch.fx, as AOTAutograd
    hands them to a compiler) are appended to, in that order, when it first runs."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(graph, example_inputs):
        graphs.append(graph)
        return make_boxed_func(graph.forward)

    torch._dynamo.reset()
    return torch.compile(function, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True), graphs


def operators(graph) -> set[str]:
    return {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}


def test_compiled_graphs_keep_the_onednn_operator_and_frozen_and_exported_ones_take_f_linear():
    """Under torch.compile the product goes through `swinv2::onednn_linear`: in training the forward graph
    calls it, the backward calls it for the input's gradient and torch.mm for the weight's, and the
    gradients are F.linear's; an inference graph calls it too. A graph traced for inductor's freezing (which
    packs F.linear's weights for its own kernel) and torch.export's (standard operators, for ONNX) hold
    F.linear instead."""
    torch.manual_seed(6)
    x = torch.randn(3, 5, 24, requires_grad=True)
    weight, bias = torch.randn(40, 24, requires_grad=True), torch.randn(40, requires_grad=True)
    compiled, graphs = compiled_with_graphs(lambda *t: F.gelu(linear(*t, impl="onednn")))
    got, got_grads = gradients(compiled, x, weight, bias)
    expected, expected_grads = gradients(lambda *t: F.gelu(F.linear(*t)), x, weight, bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    forward, backward = graphs
    assert "swinv2.onednn_linear.default" in operators(forward)
    assert {"swinv2.onednn_linear.default", "aten.mm.default"} <= operators(backward)

    from torch._inductor import config as inductor_config

    layer = Linear(24, 40)
    layer.impl = "onednn"
    for freezing in (False, True):
        compiled, graphs = compiled_with_graphs(lambda t: layer(t))
        with torch.no_grad(), inductor_config.patch(freezing=freezing):
            torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        (graph,) = graphs
        assert ("swinv2.onednn_linear.default" in operators(graph)) is not freezing, freezing

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, t):
            return self.layer(t)

    exported = torch.export.export(Wrapper(), (x,))
    assert not any("swinv2" in name for name in operators(exported.graph_module))
