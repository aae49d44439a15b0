#!/usr/bin/env bash
# Train the six captioning variants (NIC, SAT soft, SAT hard; each with and
# without layer norm) at the same time, e.g. on one GPU, and export each to a
# bundle. Every run logs to RUNS_DIR/NAME.log; the recipe stops waiting after
# TIME_LIMIT seconds (runs keep their best checkpoint so far).
#
#   DATA_DIR=data/shapes RUNS_DIR=runs DEVICE=cuda scripts/train_captions_parallel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
GLIMPSE=${GLIMPSE:-glimpse}
DATA_DIR=${DATA_DIR:-data/shapes}
RUNS_DIR=${RUNS_DIR:-runs/captions}
DEVICE=${DEVICE:-cuda}
TIME_LIMIT=${TIME_LIMIT:-3600}
THREADS=${THREADS:-2}
NUM_TRAIN=${NUM_TRAIN:-5000}
EPOCHS=${EPOCHS:-}  # overrides the configs' epoch counts when set

if [ ! -f "$DATA_DIR/captions.json" ]; then
  $GLIMPSE data shapes --out "$DATA_DIR" --num-train "$NUM_TRAIN" --num-val 500 --num-test 1000 \
    --num-novel 1000 --size 64 --seed 0 --no-progress
fi
mkdir -p "$RUNS_DIR"
ENCODER=${ENCODER:-$RUNS_DIR/encoder}
if [ ! -f "$ENCODER/checkpoints/best/model.safetensors" ]; then
  $GLIMPSE train encoder --data "$DATA_DIR" --out "$ENCODER" --config configs/encoder.json \
    --device "$DEVICE" >"$RUNS_DIR/encoder.log" 2>&1
fi
pids=()
for arch in nic sat-soft sat-hard; do
  config=configs/caption_sat.json
  [ "$arch" = nic ] && config=configs/caption_nic.json
  for ln in "" "--layer-norm"; do
    name=$arch${ln:+-ln}
    OMP_NUM_THREADS=$THREADS timeout -s INT "$TIME_LIMIT" \
      $GLIMPSE train caption --arch "$arch" $ln --data "$DATA_DIR" --out "$RUNS_DIR/$name" \
      --config "$config" --encoder-init "$ENCODER" --device "$DEVICE" ${EPOCHS:+--epochs "$EPOCHS"} \
      >"$RUNS_DIR/$name.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
for f in "$RUNS_DIR"/*.log; do echo "== $f"; grep -E '^(epoch|early|\{)' "$f" | tail -4; done
exit $status
