#!/usr/bin/env bash
# Equal wall-clock comparison of three 128 px recipes on one CPU thread (issue 16, item 1):
#   (a) today's recipe: StyleGAN2 G (small) + StyleGAN2 D, logistic loss, R1
#   (b) StyleGAN2 G (small) + projected D (frozen EfficientNet-Lite0), hinge loss, no R1
#   (c) lighter StyleGAN2 G (light) + projected D
# Each run is stopped after MINUTES of wall-clock time; its last snapshot is what gets measured
# (experiments/faces128/measure.sh). Data: python experiments/faces64/make_dataset.py DATA --res 128 --name faces128
set -euo pipefail
DATA=${DATA:-/work/data}
RUNS=${RUNS:-/work/data/runs128}
MINUTES=${MINUTES:-12}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
common=(--data "$DATA/faces128_train.zip" --res 128 --batch 16 --kimg 1000 --snap-kimg 0.5 --tick-kimg 0.25 --threads 1)
run() {  # name, extra flags...
  local name=$1; shift
  timeout -s TERM "$((MINUTES * 60))" python -m machinegaze.cli train "${common[@]}" --outdir "$RUNS/$name" "$@" || true
  ls "$RUNS/$name"/snapshot-*.safetensors | head -n -1 | xargs -r rm -f   # keep the last snapshot only
}
run a_stylegan_d --cfg small --d-arch stylegan
run b_projected_d --cfg small --d-arch projected
run c_light_g_projected_d --cfg light --d-arch projected
