#!/usr/bin/env bash
# Issue 16: a StyleGAN2 at 128 px from scratch with faces64's recipe (config small, batch 16, lr 0.0025, auto R1
# gamma, DiffAugment), the run that growing faces64 stands in for. Long (hundreds of kimg): rerun this script to
# resume it exactly from its latest snapshot, in this session or a later one (THREADS=2 on an idle machine).
# Data: python experiments/faces64/make_dataset.py $DATA --res 128 --name faces128
set -euo pipefail
DATA=${DATA:-/work/data}
RUN=${RUN:-/work/data/r128/scratch}
THREADS=${THREADS:-1}
resume=()
compgen -G "$RUN/snapshot-*.safetensors" > /dev/null && resume=(--resume)
OMP_NUM_THREADS=$THREADS python -m machinegaze.cli train --data "$DATA/faces128_train.zip" --outdir "$RUN" \
  --res 128 --cfg small --batch 16 --kimg 1000 --snap-kimg 4 --tick-kimg 1 --threads "$THREADS" --seed 0 "${resume[@]}"
