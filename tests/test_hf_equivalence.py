"""Our model and converters against an independent implementation: transformers' Swinv2ForImageClassification.

Every parameter is random (conftest.randomize_), so a mis-mapped weight, a transposed split or a
position bias read from the wrong table changes the outputs; logits and input gradients must agree
to 1e-4 of their scale in fp32. (transformers adds the shift mask twice: -200 instead of -100 before
the softmax, which is 0 either way.)"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Swinv2Config as HFConfig
from transformers import Swinv2ForImageClassification

import swinv2
from conftest import TINY_ARCHITECTURE, TINY_CLASSES, official_buffers, randomize_
from swinv2 import SwinTransformerV2, SwinV2Config
from swinv2.checkpoints import convert_checkpoint, export_state_dict, load_state_dict_into, read_checkpoint

TINY_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))  # SwinV2-T
CLASSES = 1000
CASES = {
    "256-w8": dict(image_size=256, window_size=8),
    "256-w16-clamped-last-stage": dict(image_size=256, window_size=16),
    "192-w12": dict(image_size=192, window_size=12),
    "256-w16-from-w12": dict(image_size=256, window_size=16, pretrained_window_sizes=(12, 12, 12, 6)),
}


def hf_model(image_size: int, window_size: int, pretrained_window_sizes=(0, 0, 0, 0), architecture=TINY_T,
             num_labels: int = CLASSES) -> Swinv2ForImageClassification:
    config = HFConfig(
        image_size=image_size, window_size=window_size, pretrained_window_sizes=list(pretrained_window_sizes),
        embed_dim=architecture["embed_dim"], depths=list(architecture["depths"]),
        num_heads=list(architecture["num_heads"]), num_labels=num_labels,
    )
    return Swinv2ForImageClassification(config).eval()


def our_model(image_size: int, window_size: int, pretrained_window_sizes=(0, 0, 0, 0), **options) -> SwinTransformerV2:
    config = SwinV2Config(
        img_size=image_size, window_size=window_size, pretrained_window_sizes=pretrained_window_sizes,
        num_classes=CLASSES, **TINY_T, **options,
    )
    return SwinTransformerV2(config).eval()


def logits_and_input_gradient(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, projection: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and the gradient of a random projection of them with respect to the pixels."""
    x = x.clone().requires_grad_(True)
    logits = forward(x)
    (logits * projection).sum().backward()
    return logits.detach(), x.grad


def assert_same_function(
    ours: Callable[[torch.Tensor], torch.Tensor], theirs: Callable[[torch.Tensor], torch.Tensor], image_size: int
) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, image_size, image_size, generator=generator)
    projection = torch.randn(CLASSES, generator=generator)
    our_logits, our_gradient = logits_and_input_gradient(ours, x, projection)
    their_logits, their_gradient = logits_and_input_gradient(theirs, x, projection)
    # Guard: the two images (and so the weights) really move the logits.
    assert (their_logits[0] - their_logits[1]).abs().max() > 0.1 * their_logits.abs().max()
    for mine, reference in ((our_logits, their_logits), (our_gradient, their_gradient)):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def hf_logits(model: Swinv2ForImageClassification) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: model(pixel_values=x).logits


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_hf_weights_converted_to_ours_match_hf(case):
    theirs = randomize_(hf_model(**case))
    ours = our_model(**case)
    load_state_dict_into(ours, theirs.state_dict())  # layout detected as "hf"
    assert_same_function(ours, hf_logits(theirs), case["image_size"])


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_our_weights_exported_to_hf_match_ours(case):
    ours = randomize_(our_model(**case))
    theirs = hf_model(**case)
    theirs.load_state_dict(export_state_dict(ours, "hf"), strict=True)
    assert_same_function(ours, hf_logits(theirs), case["image_size"])


def test_inference_in_chunks_of_images_matches_hf(monkeypatch):
    """Without gradients a stage runs on chunks of whole images: 2048 tokens per chunk gives chunks of
    one image in stage 0 (64x64 tokens), of two and one in stage 1 (32x32), the whole batch after."""
    case = CASES["256-w8"]
    theirs = randomize_(hf_model(**case))
    ours = our_model(**case, inference_chunk_tokens=2048)
    load_state_dict_into(ours, theirs.state_dict())
    chunks = []
    forward_images = type(ours.layers[0]).forward_images
    monkeypatch.setattr(type(ours.layers[0]), "forward_images",
                        lambda stage, x: chunks.append(x.shape[0]) or forward_images(stage, x))
    x = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine, reference = ours(x), theirs(pixel_values=x).logits
    assert chunks == [1, 1, 1, 2, 1, 3, 3]
    torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def test_hf_save_pretrained_directory_loads_through_create_model(tmp_path):
    theirs = randomize_(hf_model(image_size=256, window_size=8))
    theirs.save_pretrained(tmp_path)

    ours = swinv2.create_model("swinv2_tiny_window8_256", pretrained=tmp_path).eval()
    assert_same_function(ours, hf_logits(theirs), 256)

    tensors, config = read_checkpoint(tmp_path)
    assert "swinv2.embeddings.patch_embeddings.projection.weight" in tensors
    assert (config.img_size, config.window_size, config.num_classes) == ((256, 256), (8, 8), CLASSES)
    assert (config.embed_dim, config.depths, config.num_heads) == (96, (2, 2, 6, 2), (3, 6, 12, 24))


@pytest.mark.parametrize("source", ["official-pth-with-overrides", "project-directory"])
def test_converted_hf_directory_loads_in_transformers(tmp_path, tiny_model, tiny_input, source):
    if source == "project-directory":
        src = swinv2.save_pretrained(tiny_model, tmp_path / "project")
        overrides = {}
    else:  # no config in the file: the window and image size must come from the overrides
        src = tmp_path / "official.pth"
        torch.save({"model": tiny_model.state_dict()}, src)
        overrides = dict(img_size=64, window_size=4)
    dst = convert_checkpoint(src, tmp_path / "hf", target_layout="hf", **overrides)

    theirs, info = Swinv2ForImageClassification.from_pretrained(dst, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert (theirs.config.image_size, theirs.config.window_size, theirs.config.num_labels) == (64, 4, TINY_CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(pixel_values=tiny_input).logits, tiny_model(tiny_input),
                                   rtol=1e-4, atol=1e-5)


def test_window16_official_checkpoint_loads_into_window8_model(tmp_path):
    """The user complaint of SPEC 2: w16 weights with their persistent buffers into a w8 model.
    The buffers must be dropped and rebuilt for window 8; the CPB MLP carries over."""
    source = randomize_(our_model(image_size=256, window_size=16))
    path = tmp_path / "swinv2_tiny_patch4_window16_256.pth"
    torch.save({"model": official_buffers(source.state_dict(), 256, 16, TINY_T["depths"])}, path)

    ours = swinv2.create_model("swinv2_tiny_window8_256", pretrained=path).eval()
    theirs = hf_model(image_size=256, window_size=8)
    theirs.load_state_dict(export_state_dict(source, "hf"), strict=True)
    assert_same_function(ours, hf_logits(theirs), 256)


def rewrite_hf_weights(directory: Path, weights_format: str) -> None:
    """The other weight files transformers writes: pytorch_model.bin, or shards listed by an index."""
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    if weights_format == "pytorch_model.bin":
        torch.save(state, directory / "pytorch_model.bin")
        return
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({key: state[key] for key in keys}, directory / shard, metadata={"format": "pt"})
    weight_map = {key: shard for shard, keys in shards.items() for key in keys}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("weights_format", ["model.safetensors", "pytorch_model.bin", "sharded"])
def test_tiny_hf_checkpoint_reads_into_config(tmp_path, weights_format):
    """transformers' config.json fields in our terms (num_classes from the classifier's rows)."""
    theirs = hf_model(image_size=64, window_size=4, architecture=TINY_ARCHITECTURE, num_labels=TINY_CLASSES,
                      pretrained_window_sizes=(4, 4, 4, 2))
    theirs.save_pretrained(tmp_path)
    if weights_format != "model.safetensors":
        rewrite_hf_weights(tmp_path, weights_format)
    model = swinv2.from_pretrained(tmp_path)
    assert model.config.pretrained_window_sizes == ((4, 4), (4, 4), (4, 4), (2, 2))
    assert (model.config.num_classes, model.config.depths) == (TINY_CLASSES, (2, 2, 2, 1))
    for name, value in export_state_dict(model, "hf").items():
        assert torch.equal(value, theirs.state_dict()[name]), name
