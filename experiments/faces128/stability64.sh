#!/usr/bin/env bash
# Issue 16: does the projected D train stably at 64 px? Two groups of three runs side by side (GROUP=1 or 2),
# one torch thread each, each stopped after MINUTES of wall-clock time (equal wall clock, similar machine load);
# the last snapshot is measured with measure.py against quick64_heldout.zip.
# Data: python experiments/faces64/make_dataset.py DATA --res 64   (quick64_train.zip, quick64_heldout.zip)
# Group 1:
#   p0  projected D as in the 128 px comparison: heads without norm, Adam lr 0.0025 for G and D
#   p1  the paper's settings: group-norm heads, Adam lr 0.0002 for G and D (betas (0, 0.99) either way)
#   p2  as p1, the frozen backbone seeing images upsampled to 128 px
# Group 2:
#   s0  today's recipe: StyleGAN2 D, logistic loss, R1 (auto gamma), lr 0.0025
#   p3  group-norm heads, G lr 0.0025 (StyleGAN2's), D lr 0.0002
#   p4  as p1 with batch-norm heads (the paper's down blocks)
# Group 3 (GROUP=3 MINUTES=7, a diagnostic; ours ran alone with --tick-kimg 0.128 while the others were measured):
#   p5  the authors' StyleGAN2-G settings as far as ours go: batch norm, backbone at 224 px, lr 0.002 for G and D
set -euo pipefail
DATA=${DATA:-/work/data}
RUNS=${RUNS:-/work/data/runs64g2}
MINUTES=${MINUTES:-10}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
GROUP=${GROUP:-1}
common=(--data "$DATA/quick64_train.zip" --res 64 --batch 16 --kimg 1000 --snap-kimg 0.5 --tick-kimg 0.25 --threads 1
        --cfg small)
run() {  # name, extra flags...
  local name=$1; shift
  timeout -s TERM "$((MINUTES * 60))" python -m machinegaze.cli train "${common[@]}" --outdir "$RUNS/$name" "$@" \
    > "$RUNS/$name.log" 2>&1 || true
}
P=(--d-arch projected)
if [ "$GROUP" = 1 ]; then
  run p0_lr0025_nonorm "${P[@]}" --d-norm none --lr 0.0025 &
  run p1_lr0002_gn "${P[@]}" --d-norm group --lr 0.0002 --dlr 0.0002 &
  run p2_lr0002_gn_bb128 "${P[@]}" --d-norm group --lr 0.0002 --dlr 0.0002 --d-backbone-res 128 &
elif [ "$GROUP" = 2 ]; then
  run s0_stylegan_d --d-arch stylegan --lr 0.0025 &
  run p3_glr0025_dlr0002_gn "${P[@]}" --d-norm group --lr 0.0025 --dlr 0.0002 &
  run p4_lr0002_bn "${P[@]}" --d-norm batch --lr 0.0002 --dlr 0.0002 &
else
  run p5_bb224_bn_lr002 "${P[@]}" --d-norm batch --d-backbone-res 224 --lr 0.002 --dlr 0.002 &
fi
wait
