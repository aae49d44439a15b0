#!/usr/bin/env bash
# Train the text-to-image GANs on the single-object shapes world, on CPU:
# Reed et al. 2016's four losses (GAN, GAN-CLS, GAN-INT, GAN-INT-CLS) with the
# same number of steps each, and StackGAN Stage-I then Stage-II on the frozen
# Stage-I. Two chains run side by side, each logging to RUNS_DIR/NAME.log:
#
#   chain A: gan, gan-cls, gan-int, gan-int-cls        (~8 min each on a shared 2-core CPU),
#            Reed et al.'s recipe (configs/gan_reed2016.json), not the stabilised default
#   chain B: stackgan-1 (~10 min), then stackgan-2      (~12 min),
#            Zhang et al.'s recipe (configs/stackgan_zhang2017.json), not the default
#
# Needs data/t2i (`glimpse data shapes` with one object per image at 128 px) and
# the char-CNN-RNN text encoder of `glimpse train text-encoder` in runs/text-encoder.
#
#   scripts/train_t2i.sh            # both chains
#   scripts/train_t2i.sh gan        # chain A only
#   scripts/train_t2i.sh stackgan   # chain B only
set -euo pipefail
cd "$(dirname "$0")/.."
GLIMPSE=${GLIMPSE:-.venv/bin/glimpse}
DATA_DIR=${DATA_DIR:-data/t2i}
TEXT_ENCODER=${TEXT_ENCODER:-runs/text-encoder}
RUNS_DIR=${RUNS_DIR:-runs}
GAN_STEPS=${GAN_STEPS:-600}
STAGE1_STEPS=${STAGE1_STEPS:-700}
STAGE2_STEPS=${STAGE2_STEPS:-200}
BATCH_SIZE=${BATCH_SIZE:-32}
STAGE2_BATCH_SIZE=${STAGE2_BATCH_SIZE:-16}  # 128 px steps cost ~5x a 64 px step
WHICH=${1:-all}

train() {  # NAME ARGS...: one run, niced, one thread, logged
  local name=$1
  shift
  nice -n 10 env OMP_NUM_THREADS=1 "$GLIMPSE" train "$@" --data "$DATA_DIR" \
    --out "$RUNS_DIR/$name" --device cpu --sample-every 100 --save-every 100 \
    > "$RUNS_DIR/$name.log" 2>&1
}

chain_gan() {
  for variant in gan gan-cls gan-int gan-int-cls; do
    train "$variant" gan --variant "$variant" --text-encoder "$TEXT_ENCODER" \
      --config configs/gan_reed2016.json --steps "$GAN_STEPS" --batch-size "$BATCH_SIZE"
  done
}

chain_stackgan() {
  train stackgan-1 stackgan --stage 1 --text-encoder "$TEXT_ENCODER" \
    --config configs/stackgan_zhang2017.json --steps "$STAGE1_STEPS" --batch-size "$BATCH_SIZE"
  train stackgan-2 stackgan --stage 2 --stage1-run "$RUNS_DIR/stackgan-1" \
    --config configs/stackgan_zhang2017.json --steps "$STAGE2_STEPS" \
    --batch-size "$STAGE2_BATCH_SIZE"
}

mkdir -p "$RUNS_DIR"
case "$WHICH" in
  gan) chain_gan ;;
  stackgan) chain_stackgan ;;
  all) chain_gan & chain_stackgan & wait ;;
  *) echo "usage: $0 [all|gan|stackgan]" >&2; exit 2 ;;
esac
