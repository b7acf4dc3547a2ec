#!/bin/bash
# The GPU checks of issues 37 and 39 as one prepared run, for a session lent a GPU machine
# (its python3 holds a CUDA torch, scipy, matplotlib, safetensors, PyYAML, tqdm, hypothesis
# and pytest; nothing can be fetched there). Before the call, here, in the repository root:
#
#   echo /.gpu/ >> .git/info/exclude && mkdir -p .gpu/mnist .gpu/whl
#   cp ../shared/data/mnist/*.gz .gpu/mnist/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .gpu/whl sybil
#
# then the device tool's run with command "bash experiments/gpu_check.sh", carry [".gpu"]
# and timeout_s 560. Everything it measures lands in $OUT (logs, JSON, the NICE run's curve);
# NICE_SECONDS (default 300) bounds the NICE run, which stops cleanly on SIGINT and keeps its
# best epoch. DEVICE=cpu NICE_SECONDS=30 runs the script's logic on a CPU (a dry run).
set -u
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-check}
NICE_SECONDS=${NICE_SECONDS:-300}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
if ls .gpu/whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())" >> "$OUT/gpu.txt"

# 1. the suite's CUDA tests (tests/test_cuda.py, the speed guide's GPU blocks)
FLOWFORGE_TEST_DEVICE=$DEVICE timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/test_cuda.py docs/guides/speed.md 2>&1 | tail -25 > "$OUT/cuda_tests.log"

# 2. fit on a toy: float32 and bf16, with the step time beside the CPU's
# (one log for the three: at most 8 files come back from $OUT)
for run in "cpu float32" "$DEVICE float32" "$DEVICE bf16"; do
  set -- $run
  echo "== --device $1 --precision $2" >> "$OUT/moons.log"
  timeout 120 python3 -m flowforge fit --data two-moons --model realnvp --epochs 5 \
    --device "$1" --precision "$2" --no-plots --no-progress --out "/tmp/moons-$1-$2" \
    >> "$OUT/moons.log" 2>&1
  python3 -m flowforge eval "/tmp/moons-$1-$2" >> "$OUT/moons.log" 2>&1
  cat "/tmp/moons-$1-$2/metrics.jsonl" >> "$OUT/moons.log"  # each epoch's seconds
done

# 3. NICE on MNIST on the GPU: the command line's recipe, stopped after NICE_SECONDS by SIGINT
timeout -s INT "$NICE_SECONDS" python3 -m flowforge fit --data mnist --model nice \
  --data-dir .gpu/mnist --device "$DEVICE" --no-plots --no-progress --checkpoint-every 2000 \
  --out /tmp/nice > "$OUT/nice.log" 2>&1
python3 -m flowforge eval /tmp/nice >> "$OUT/nice.log" 2>&1
cp /tmp/nice/metrics.jsonl "$OUT/nice_metrics.jsonl" 2>/dev/null
python3 -m flowforge plot /tmp/nice >> "$OUT/nice.log" 2>&1
cp /tmp/nice/plots/samples.png "$OUT/nice_samples.png" 2>/dev/null
ls -la "$OUT"
