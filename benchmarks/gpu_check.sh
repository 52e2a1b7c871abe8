#!/usr/bin/env bash
# GPU checks of gnp-study on one CUDA GPU, in one folder, in at most about 8 minutes on an H100:
#   1. benchmarks/bench_optim.py on CUDA (SGD, pytorch_optimizer.SAM, GNP full and amortised every=2/5/10)
#      at fp32, bf16 (autocast) and fp16 (autocast + GradScaler; SAM not timed there);
#   2. benchmarks/bench_gpu_packing.py at 1, 2, 4 and 8 trials per GPU (a CIFAR-10 ResNet on the on-device
#      loader, through the study's own Ray Tune stage);
#   3. a short greedy study on the real CIFAR-10 with `data.loader: device` (gnp-study run greedy).
#
# Usage:  bash benchmarks/gpu_check.sh CIFAR10 [OUT]
#   CIFAR10  the CIFAR-10 ImageFolder root (train/<class>/*.jpg, test/<class>/*.jpg) or its .tar.gz
#   OUT      the folder for every result (default: $OUT when set, else gpu_check_out/)
# Environment: PYTHON (default python3) must import torch, torchvision, ray[tune] and the package's other
# dependencies; the repository root is put on PYTHONPATH, so nothing is installed.
#
# Without a CUDA device it prints one line and exits with status 2, before anything runs.
set -euo pipefail

PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh CIFAR10_ROOT_OR_TAR_GZ [OUT]" >&2
    exit 2
fi
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu_check.sh: $PY cannot import torch (set PYTHON to an environment with the package's dependencies): nothing run" >&2
    exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False): nothing run" >&2
    exit 2
fi

DATA=$1
OUTDIR=${2:-${OUT:-gpu_check_out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [ -f "$DATA" ]; then                      # the archive: unpack once into a scratch folder
    SCRATCH=$(mktemp -d)
    tar -xzf "$DATA" -C "$SCRATCH"
    DATA=$(dirname "$(find "$SCRATCH" -maxdepth 3 -type d -name train | head -n 1)")
fi
[ -d "$DATA/train" ] && [ -d "$DATA/test" ] || { echo "gpu_check.sh: no train/ and test/ under $DATA" >&2; exit 2; }

step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUTDIR/gpu_check.log"; }
cd "$ROOT"
"$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$OUTDIR/device.txt"
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true

# 1. The optimizer step (about 1 minute per precision on an H100).
for p in fp32 bf16 fp16; do
    step "bench_optim $p"
    timeout 150 "$PY" benchmarks/bench_optim.py --device cuda --precision "$p" --batch 128 --reps 5 --steps 10 \
        --json "$OUTDIR/bench_optim_$p.json" > "$OUTDIR/bench_optim_$p.md" 2>&1 || echo "bench_optim $p failed: see bench_optim_$p.md" | tee -a "$OUTDIR/gpu_check.log"
done

# 2. Packing trials onto one GPU (about 2 minutes).
step "bench_gpu_packing 1 2 4 8"
timeout 180 "$PY" benchmarks/bench_gpu_packing.py --data-root "$DATA" --levels 1 2 4 8 --trials 8 --epochs 2 \
    --train-subset 10000 --json "$OUTDIR/bench_gpu_packing.json" > "$OUTDIR/bench_gpu_packing.md" 2>&1 \
    || echo "bench_gpu_packing failed: see bench_gpu_packing.md" | tee -a "$OUTDIR/gpu_check.log"

# 3. A short greedy study on CIFAR-10 with the on-device loader (about 2 minutes).
step "study cifar10_gpu_check"
sed -e "s|^  root: .*|  root: $DATA|" benchmarks/cifar10_gpu_check.yaml > "$OUTDIR/cifar10_gpu_check.yaml"
timeout 180 "$PY" -m gnp_study.cli run greedy "$OUTDIR/cifar10_gpu_check.yaml" -o "$OUTDIR/cifar10_gpu_check" \
    > "$OUTDIR/study.log" 2>&1 || echo "study failed: see study.log" | tee -a "$OUTDIR/gpu_check.log"
rm -rf "$OUTDIR/cifar10_gpu_check/ray"      # Tune's storage (checkpoints): not needed to read the result
step "done: $OUTDIR"
