"""The checks that need a GPU, in one short command: the fast path against the reference and the peers there.

    python benchmarks/cuda_checks.py                  # on cuda; exits 1 if a check fails
    python benchmarks/cuda_checks.py --device cpu     # the same checks on the CPU (a dry run of the script)

No test in tests/ runs on a GPU (CI has none), and "auto" takes other kernels there: SDPA's
memory-efficient kernel in training too (it returns the mask's gradient), PyTorch's matmuls for the
linear layers. So this compares, on the device, with TF32 off (fp32 means fp32):
- the fast path with the reference attention ("plain"): logits in eval, and the loss and every
  parameter's gradient of a training step, for SwinV2-T 256/w8 and for a padded map (strict_img_size off);
- the same model on the CPU, and Hugging Face's Swinv2ForImageClassification on the device (same weights);
- the position-bias cache after a fused AdamW step on the device (against a fresh copy, which has no cache);
- bf16 autocast against fp32, and torch.compile against eager (logits, and one training step's loss).
Every parameter is perturbed first: the default initialisation zeroes the post-norms, so every block
would be the identity and a difference in the attention would not show. One line per check, with its
measured difference and bound. benchmarks/gpu_session.sh runs this and then the benchmark."""
from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F

from swinv2 import create_model
from swinv2.benchmark import build_hf

FP32 = 1e-5  # the bound for the fast path against the reference, relative to the largest value
failures: list[str] = []


def report(name: str, difference: float, bound: float) -> None:
    passed = difference <= bound
    print(f"{'ok  ' if passed else 'FAIL'} {name:62s} {difference:10.3g}  (bound {bound:.0e})", flush=True)
    if not passed:
        failures.append(name)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: one number for tensors of any scale."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def gradients(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def fast_against_plain(name: str, overrides: dict, image_size: int, device: torch.device) -> None:
    torch.manual_seed(0)
    # "sdpa", not "auto": on the CPU (the dry run) "auto" trains through the reference too.
    fast = perturbed(create_model("swinv2_tiny_window8_256", drop_path_rate=0.0, attention_impl="sdpa", **overrides))
    plain = create_model("swinv2_tiny_window8_256", drop_path_rate=0.0, attention_impl="plain", **overrides)
    plain.load_state_dict(fast.state_dict())
    fast, plain = fast.to(device), plain.to(device)
    images = torch.randn(2, 3, image_size, image_size, device=device)
    labels = torch.tensor([1, 7], device=device)
    with torch.no_grad():
        report(f"{name}: eval logits, fast / plain", relative(fast.eval()(images), plain.eval()(images)), FP32)
    fast_loss, fast_grads = gradients(fast, images, labels)
    plain_loss, plain_grads = gradients(plain, images, labels)
    report(f"{name}: training loss, fast / plain", relative(fast_loss, plain_loss), FP32)
    worst = max(plain_grads, key=lambda key: relative(fast_grads[key], plain_grads[key]))
    report(f"{name}: worst gradient ({worst})", relative(fast_grads[worst], plain_grads[worst]), 1e-4)


def against_peers(device: torch.device) -> None:
    torch.manual_seed(0)
    model = perturbed(create_model("swinv2_tiny_window8_256", drop_path_rate=0.0)).eval()  # no random depth
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        on_cpu = model(images)
        hf = build_hf(model).eval().to(device)
        model = model.to(device)
        images = images.to(device)
        logits = model(images)
        report("eval logits, this device / the CPU", relative(logits, on_cpu), FP32)
        report("eval logits, ours / Hugging Face on this device", relative(logits, hf(images).logits), FP32)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            report("eval logits, bf16 autocast / fp32", relative(model(images), logits), 5e-2)

    # The cache: evaluated, one fused AdamW step (which counts no versions), evaluated again.
    labels = torch.tensor([3, 5], device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    gradients(model, images, labels)
    optimizer.step()
    with torch.no_grad():
        after = model.eval()(images)
        fresh = copy.deepcopy(model)(images)  # a copy starts with empty caches
    report("eval logits after an optimiser step / a fresh copy", relative(after, fresh), 1e-6)

    compiled = torch.compile(copy.deepcopy(model))
    with torch.no_grad():
        report("eval logits, torch.compile / eager", relative(compiled.eval()(images), after), 1e-4)
    compiled_loss, _ = gradients(compiled, images, labels)
    eager_loss, _ = gradients(model, images, labels)
    report("training loss, torch.compile / eager", relative(compiled_loss, eager_loss), 1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: run with --device cpu for a dry run")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"{device}, torch {torch.__version__}")
    fast_against_plain("SwinV2-T 256/w8", {}, 256, device)
    fast_against_plain("SwinV2-T, 232x232 padded to windows", {"strict_img_size": False}, 232, device)
    against_peers(device)
    print(f"{len(failures)} of the checks failed" if failures else "all checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
