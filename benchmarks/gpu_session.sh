#!/usr/bin/env bash
# Everything this project measures on a GPU, in one command of at most 9.5 minutes (the device tool lets a
# command run 10, and a session 15 minutes of device time, the machine's start included):
#
#     bash benchmarks/gpu_session.sh            # writes its logs and JSON under $OUT (default ./gpu-out)
#
# 1. benchmarks/cuda_checks.py: the fast path against the reference, the CPU and Hugging Face, on the GPU;
# 2. the issue's benchmark on the GPU, eager (fp32 and bf16, batch 8, 32, 128, training at 8 and 32);
# 3. the same with torch.compile as a peer, fewer cases (each shape compiles in the warm-up).
# Each step has its own time limit, and writes its files as it ends, so that a step that runs out leaves
# the earlier ones' results. The machine's own python3 (PyTorch, transformers) runs the project from src/:
# nothing is installed. docs/performance.md ("GPU") takes its table from peers-cuda*.json
# (`python benchmarks/peers.py --show PATH` prints one).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

{ nvidia-smi; "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
    2>&1 | tee "$OUT/machine.txt"
timeout 150 "$PYTHON" benchmarks/cuda_checks.py 2>&1 | tee "$OUT/checks.txt"
timeout 240 "$PYTHON" benchmarks/peers.py --device cuda --implementations swinv2 hf \
    --batch-size 8 32 128 --train-batch-size 8 32 --repeats 7 --json "$OUT/peers-cuda.json" 2>&1 | tee "$OUT/peers.txt"
timeout 170 "$PYTHON" benchmarks/peers.py --device cuda --implementations swinv2-compiled swinv2 hf \
    --batch-size 32 128 --train-batch-size 32 --warmup 3 --repeats 5 --json "$OUT/peers-cuda-compiled.json" \
    2>&1 | tee "$OUT/peers-compiled.txt"
