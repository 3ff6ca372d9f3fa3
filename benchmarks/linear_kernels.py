"""The linear layers' products of a model through F.linear (MKL's sgemm on x86) and through oneDNN.

    python benchmarks/linear_kernels.py                         # SwinV2-T 256/w8, batch 8, fp32
    python benchmarks/linear_kernels.py --batch-size 1 --repeats 9

Every linear layer of the model's blocks, merging layers and head at the batch's token counts (qkv, proj,
fc1, fc2, reduction, head), on random tensors, fp32, this process's threads: the forward product
(x W^T + b), the input gradient's (g W) and the weight gradient's (g^T x), each through F.linear /
torch.mm and through what models/linear.py calls for linear_impl="onednn". Interleaved rounds; medians
of the whole set's time and its GFLOP/s. Also checks that the two kernels agree to 1e-5 of the output's
scale. The numbers behind the "auto" rule of models/linear.py (docs/performance.md, item 18)."""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from swinv2 import create_model
from swinv2.benchmark import time_interleaved
from swinv2.models.linear import Linear, cpu_description, onednn_available, onednn_linear


def linear_shapes(model_name: str, batch_size: int) -> list[tuple[int, int, int, bool]]:
    """(tokens, in, out, bias) of every linear layer but the position-bias MLPs' (once per batch, tiny), with
    the tokens it sees for a batch of `batch_size` images at once (a training step's; CPU inference runs
    stage 0 one image at a time, item 10). Read off a forward pass on the meta device."""
    with torch.device("meta"):
        model = create_model(model_name)
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, Linear) and "cpb_mlp" not in name}
    tokens: dict[str, int] = {}

    def record(name: str):
        def hook(module, args, output) -> None:  # returns None: a hook's result would replace the output
            tokens.setdefault(name, args[0].numel() // args[0].shape[-1])
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in layers.items()]
    with torch.no_grad():
        model.eval()(torch.zeros(batch_size, model.config.in_chans, *model.config.img_size, device="meta"))
    for hook in hooks:
        hook.remove()
    # WindowAttention calls qkv's product itself, with its q and v biases: the tokens are proj's.
    return [(tokens.get(name) or tokens[name.replace(".qkv", ".proj")], module.in_features, module.out_features,
             module.bias is not None or name.endswith(".qkv")) for name, module in layers.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swinv2_tiny_window8_256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not onednn_available():
        raise SystemExit("this PyTorch has no oneDNN: nothing to compare")
    shapes = linear_shapes(args.model, args.batch_size)
    generator = torch.Generator().manual_seed(0)
    tensors = [(torch.randn(tokens, fan_in, generator=generator), torch.randn(fan_out, fan_in, generator=generator),
                torch.randn(fan_out, generator=generator) if bias else None,
                torch.randn(tokens, fan_out, generator=generator))
               for tokens, fan_in, fan_out, bias in shapes]
    for x, weight, bias, _ in tensors:
        expected = F.linear(x, weight, bias)
        error = (onednn_linear(x, weight, bias) - expected).abs().max() / expected.abs().max()
        assert error < 1e-5, f"oneDNN and F.linear differ by {error:.2e} of the output's scale"
    flops = sum(2 * tokens * fan_in * fan_out for tokens, fan_in, fan_out, _ in shapes)
    steps = {
        "forward, F.linear": lambda: [F.linear(x, w, b) for x, w, b, _ in tensors],
        "forward, oneDNN": lambda: [onednn_linear(x, w, b) for x, w, b, _ in tensors],
        "input gradient, torch.mm": lambda: [g.mm(w) for _, w, _, g in tensors],
        "input gradient, oneDNN": lambda: [onednn_linear(g, w.t(), None) for _, w, _, g in tensors],
        "weight gradient, torch.mm": lambda: [g.t().mm(x) for x, _, _, g in tensors],
        "weight gradient, oneDNN": lambda: [onednn_linear(g.t(), x.t(), None) for x, _, _, g in tensors],
    }
    seconds = time_interleaved(steps, args.warmup, args.repeats, torch.device("cpu"))
    print(f"{args.model}, batch {args.batch_size}: {len(shapes)} linear layers, {flops / 1e9:.1f} GFLOP per set; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_description() or 'unknown'} "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.repeats} interleaved rounds")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:27s} {median * 1e3:8.1f} ms  ({min(values) * 1e3:.1f}-{max(values) * 1e3:.1f})"
              f"  {flops / median / 1e9:6.1f} GFLOP/s")
    for product in ("forward", "input gradient", "weight gradient"):
        default, onednn = (seconds[name] for name in steps if name.startswith(product + ","))
        ratios = [a / b for a, b in zip(default, onednn)]
        print(f"  {product}: oneDNN {statistics.median(ratios):.2f}x the default kernel's speed "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")

if __name__ == "__main__":
    main()
