#!/usr/bin/env bash
# The GPU measurements as one run (about 7 minutes on an H100/H200):
# the CUDA-graph tests, then ours vs DDPMPipeline fp32 vs the UNet alone on the cifar10-32 architecture, 1000 steps,
# batch 1 and 64, UNet in float16, with torch.compile, the fp16-vs-fp32 sample comparison, and the app's cold and warm
# first sample. Writes everything under ${OUT:-bench/results}.
#
#   bash bench/gpu_check.sh            # where torch (CUDA) and diffusers are installed
#
# On a machine with torch but without diffusers and no package index, download the wheels elsewhere into .whl/
# (git-ignored) and bring the folder along; this script installs whatever .whl/ holds:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
set -uo pipefail
OUT=${OUT:-bench/results}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_fast.py 2>&1 | tail -15 | tee "$OUT/gpu-tests.txt"
for b in 1 64; do
  timeout 200 python3 bench/sampling_speed.py --model cifar10-arch --batch $b --steps 1000 --repeats 3 --dtype float16 \
    --compile --json "$OUT/gpu-cifar10-b$b-s1000.json" 2>&1 | grep -v Warning | tee "$OUT/gpu-cifar10-b$b.md"
done
timeout 60 python3 bench/half_precision.py --model cifar10-arch --batch 16 --steps 1000 --dtypes float16 bfloat16 2>&1 | grep -v Warning | tee "$OUT/gpu-half.md"
timeout 30 python3 bench/half_precision.py --model ddpm-mnist-28 --batch 16 --steps 1000 2>&1 | grep -v Warning | tee -a "$OUT/gpu-half.md"
# what a visitor of a GPU Space waits on: process start, a cold and a warm default request (1000 steps, batch 8)
timeout 90 python3 bench/startup.py 2>&1 | grep -v Warning | tee "$OUT/gpu-startup.md"
