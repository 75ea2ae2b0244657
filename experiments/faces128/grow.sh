#!/usr/bin/env bash
# Issue 16: grow faces64 to 128 px in three stages (docs/train.md, sessions 6-7 and 11), then two variants that
# also train lower blocks. Every stage starts from the previous one's last snapshot with --init-from (so Adam
# restarts); each stage is resumable on its own (rerun the script: finished stages are skipped).
#   warm    8 kimg: D alone against the grown, frozen G (its new 128 px block starts silent)
#   freeze 12 kimg: only the 128 px synthesis block trains (G lr 0.0005), D lr 0.0025
#   slowd   8 kimg: the same with D lr 0.0005 (a D as slow as G)
#   whole   6 kimg from slowd's 4-kimg snapshot: every G layer, G lr 0.0001, D 0.0005 (1 thread, beside f64)
#   f64     6 kimg from slowd's 4-kimg snapshot: the 64 and 128 px blocks, G lr 0.0002, D 0.0005 (1 thread)
# Then: python experiments/faces128/measure.py OUT.json --num-gen 1000 --real-res 128 --subsets 4 \
#         faces64=faces64@$DATA/faces128_heldout.zip slowd4=$RUNS/slowd/snapshot-000004000.safetensors@... ...
# Data: python experiments/faces64/make_dataset.py $DATA --res 128 --name faces128
set -euo pipefail
DATA=${DATA:-/work/data}
RUNS=${RUNS:-/work/data/r128}
common=(--data "$DATA/faces128_train.zip" --res 128 --cfg small --batch 16 --tick-kimg 1)
stage() {  # name, kimg, init, extra flags...
  local name=$1 kimg=$2 init=$3; shift 3
  local last
  last=$(printf "%s/%s/snapshot-%09d.safetensors" "$RUNS" "$name" "$((kimg * 1000))")
  [ -f "$last" ] && return 0
  local resume=()
  compgen -G "$RUNS/$name/snapshot-*.safetensors" > /dev/null && resume=(--resume)
  python -m machinegaze.cli train "${common[@]}" --outdir "$RUNS/$name" --kimg "$kimg" --init-from "$init" \
    "${resume[@]}" "$@" > "$RUNS/$name.log" 2>&1
}
mkdir -p "$RUNS"
stage warm 8 faces64 --d-warmup-kimg 8 --lr 0.0005 --dlr 0.0025 --snap-kimg 4 --threads 2
stage freeze 12 "$RUNS/warm/snapshot-000008000.safetensors" --g-freeze-below 128 --lr 0.0005 --dlr 0.0025 \
  --snap-kimg 4 --threads 2
stage slowd 8 "$RUNS/freeze/snapshot-000012000.safetensors" --g-freeze-below 128 --lr 0.0005 --dlr 0.0005 \
  --snap-kimg 2 --threads 2
from="$RUNS/slowd/snapshot-000004000.safetensors"
OMP_NUM_THREADS=1 stage whole 6 "$from" --lr 0.0001 --dlr 0.0005 --snap-kimg 2 --threads 1 &
OMP_NUM_THREADS=1 stage f64 6 "$from" --g-freeze-below 64 --lr 0.0002 --dlr 0.0005 --snap-kimg 2 --threads 1 &
wait
