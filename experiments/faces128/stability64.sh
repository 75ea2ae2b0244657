#!/usr/bin/env bash
# Issue 16: does the projected D train stably at 64 px? Three runs side by side, one torch thread each, each
# stopped after MINUTES of wall-clock time (equal wall clock, same machine load); the last snapshot is measured
# with measure.py against quick64_heldout.zip. Data: python experiments/faces64/make_dataset.py DATA --res 64
#   a   the recipe of the 128 px comparison: heads without norm, Adam lr 0.0025 for G and D
#   b   the paper's settings: group-norm heads, Adam lr 0.0002 for G and D (betas (0, 0.99) either way)
#   b2  as b, with the frozen backbone seeing images upsampled to 128 px
set -euo pipefail
DATA=${DATA:-/work/data}
RUNS=${RUNS:-/work/data/runs64g2}
MINUTES=${MINUTES:-10}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
common=(--data "$DATA/quick64_train.zip" --res 64 --batch 16 --kimg 1000 --snap-kimg 0.5 --tick-kimg 0.25 --threads 1
        --cfg small --d-arch projected)
run() {  # name, extra flags...
  local name=$1; shift
  timeout -s TERM "$((MINUTES * 60))" python -m machinegaze.cli train "${common[@]}" --outdir "$RUNS/$name" "$@" \
    > "$RUNS/$name.log" 2>&1 || true
}
run a_lr0025_nonorm --d-norm none --lr 0.0025 &
run b_lr0002_gn --d-norm group --lr 0.0002 --dlr 0.0002 &
run b2_lr0002_gn_bb128 --d-norm group --lr 0.0002 --dlr 0.0002 --d-backbone-res 128 &
wait
