"""Issue 3, export: torch.compile without graph breaks, torch.export, and ONNX run by onnxruntime.
Each compiled or exported program is checked against the eager model on inputs it was not traced with."""
from __future__ import annotations

import pytest
import torch

import swinv2

TINY = dict(img_size=64, window_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), num_classes=7,
            drop_path_rate=0.0)


@pytest.fixture(scope="module")
def model() -> swinv2.SwinTransformerV2:
    torch.manual_seed(0)
    return swinv2.SwinTransformerV2(**TINY).eval()


def test_torch_export_with_dynamic_batch(model):
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch}})
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager(model):
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break is an error
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_with_dynamic_batch_runs_in_onnxruntime(model, tmp_path):
    import onnxruntime  # in the test extras, with onnx and onnxscript (the exporter)

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch}}, dynamo=True)
    path = tmp_path / "swinv2.onnx"
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 64, 64)  # another batch size than the one traced
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-4, atol=1e-4)
