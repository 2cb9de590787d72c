#!/usr/bin/env bash
# The GPU measurements as one run, what is not yet measured first (about 8 minutes on an H100/H200; each part has a
# time limit, so a run cut short still returns the parts before):
#   1. the CUDA tests (the captured step against the plain one on the same CUDA generator);
#   2. what a visitor waits on: the bundled model's default request cold and warm and, where gradio is installed,
#      `python app.py` and its first two requests;
#   3. the same seed in float16 and float32 (the bundled model, then the cifar10-32 architecture);
#   4. the celebahq-256 architecture at batch 4, 100 steps, ours vs DDPMPipeline fp32;
#   5. ours vs DDPMPipeline fp32 vs the UNet alone, cifar10-32 architecture, 1000 steps, batch 1 and 64, float16,
#      with torch.compile (bench/RESULTS.md has them from an H200).
# Writes six files under ${OUT:-bench/results}: gpu.txt (card, versions), gpu-tests.txt, three JSON files and
# gpu-log.md (every table).
#
#   bash bench/gpu_check.sh            # where torch (CUDA) and diffusers are installed
#
# On a machine with torch but without diffusers (or gradio) and no package index, download the wheels elsewhere into
# .whl/ (git-ignored) and bring the folder along; this script installs whatever .whl/ holds:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
set -uo pipefail
OUT=${OUT:-bench/results}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$OUT"
LOG="$OUT/gpu-log.md"
: >"$LOG"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
quiet() { grep -v -i warning; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"
# only the tests that differ on a GPU; the CPU ones (torch.compile for the CPU included, minutes) run in CI
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_fast.py tests/test_dpm_solver.py \
  -k "cuda_graph or default_modes" 2>&1 | tail -25 | tee "$OUT/gpu-tests.txt"
timeout 60 python3 bench/startup.py 2>&1 | quiet | tee -a "$LOG"
if python3 -c "import gradio, gradio_client" 2>/dev/null; then
  timeout 120 python3 bench/startup.py --server 2>&1 | quiet | tee -a "$LOG"
fi
timeout 40 python3 bench/half_precision.py --model ddpm-mnist-28 --batch 16 --steps 1000 2>&1 | quiet | tee -a "$LOG"
timeout 60 python3 bench/half_precision.py --model cifar10-arch --batch 16 --steps 1000 --dtypes float16 2>&1 | quiet | tee -a "$LOG"
# the 113.7M-parameter UNet: without torch.compile (its compilation alone would cost minutes of this run)
timeout 90 python3 bench/sampling_speed.py --model celebahq-arch --batch 4 --steps 100 --repeats 3 --dtype float16 \
  --json "$OUT/gpu-celebahq-b4-s100.json" 2>&1 | quiet | tee -a "$LOG"
for b in 1 64; do
  timeout 180 python3 bench/sampling_speed.py --model cifar10-arch --batch $b --steps 1000 --repeats 2 --dtype float16 \
    --compile --json "$OUT/gpu-cifar10-b$b-s1000.json" 2>&1 | quiet | tee -a "$LOG"
done
