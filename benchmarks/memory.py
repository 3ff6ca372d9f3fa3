"""Peak memory and time of one SwinV2 training step with the paper's memory savers (section 3.5).

    python benchmarks/memory.py                       # SwinV2-T, 512 px, window 16, batch 2, CPU
    python benchmarks/memory.py --batch-size 8 --device cuda

"neither" is the default model, whose MLPs take their chunked CPU training step (models/mlp.py); the
last row is the same model with autograd's MLP step.

Each configuration runs in a fresh process. After a warm-up step (which also allocates the AdamW
state), the peak is reset and one more step measured: on CPU the resident-set high-water mark
(VmHWM, reset through /proc/self/clear_refs) above the level before the step; on CUDA
torch.cuda.max_memory_allocated above the memory allocated before the step.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIGURATIONS = {
    "neither": dict(),
    "checkpointing": dict(use_checkpoint=True),
    "sequential attention": dict(attention_chunk_size=16),
    "both": dict(use_checkpoint=True, attention_chunk_size=16),
    # Before item 23 (docs/performance.md): autograd's MLP step, which keeps GELU's output too.
    "autograd MLP step": dict(mlp_chunk_elements=0),
}


def resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this benchmark's CPU mode needs Linux)")


def measure(name: str, model_name: str, img_size: int, window: int, batch: int, device: str) -> dict:
    """One configuration, in this process: returns peak MiB and step seconds."""
    import torch

    import swinv2

    torch.manual_seed(0)
    model = swinv2.create_model(model_name, img_size=img_size, window_size=window, **CONFIGURATIONS[name]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: optimiser state, allocator pools
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = resident_kib("VmRSS") * 1024
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resident_kib("VmHWM") * 1024
    seconds = time.perf_counter() - start
    return dict(configuration=name, peak_mib=(peak - before) / 2**20, step_seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="swinv2_tiny_window16_256")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--window-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = parser.parse_args()
    shape = (args.model, args.img_size, args.window_size, args.batch_size, args.device)
    if args.only:
        print(json.dumps(measure(args.only, *shape)))
        return

    results = []
    for name in CONFIGURATIONS:
        command = [sys.executable, __file__, "--only", name, "--model", args.model, "--img-size", str(args.img_size),
                   "--window-size", str(args.window_size), "--batch-size", str(args.batch_size), "--device", args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(f"measured {name}", file=sys.stderr)
    baseline = results[0]
    print(f"{args.model} at {args.img_size} px, window {args.window_size}, batch {args.batch_size}, {args.device}: "
          "one training step (forward, loss, backward, AdamW)")
    print(f"| {'configuration':<22} | {'peak MiB':>9} | {'vs neither':>10} | {'step s':>7} | {'vs neither':>10} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 12}|{'-' * 9}|{'-' * 12}|")
    for row in results:
        row["memory_ratio"] = row["peak_mib"] / baseline["peak_mib"]
        row["time_ratio"] = row["step_seconds"] / baseline["step_seconds"]
        print(f"| {row['configuration']:<22} | {row['peak_mib']:>9.0f} | {row['memory_ratio']:>9.2f}x "
              f"| {row['step_seconds']:>7.2f} | {row['time_ratio']:>9.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(dict(arguments=vars(args) | {"json": str(args.json)}, results=results), indent=2))


if __name__ == "__main__":
    main()
