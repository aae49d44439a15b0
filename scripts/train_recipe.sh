#!/usr/bin/env bash
# glimpse's default training recipe: generate the shapes world, pre-train the
# image encoder on its attributes, train Show and Tell (NIC) and Show, Attend and
# Tell (soft attention) from that encoder, the latter fine-tuned by self-critical
# sequence training, export both to the model
# repository, and evaluate each exported bundle on the test split, recording the
# metrics in its manifest.
#
# Paths come from the environment; relative ones are taken from the repository
# root, where the script runs so that configs/ resolves:
#   DATA_DIR    shapes-world dataset      (default data/shapes15k)
#   RUNS_DIR    training run directories  (default runs)
#   REPOSITORY  model repository          (default model_repository)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA_DIR="${DATA_DIR:-data/shapes15k}"
RUNS_DIR="${RUNS_DIR:-runs}"
REPOSITORY="${REPOSITORY:-model_repository}"

# The highest numeric version directory of a model: the one `glimpse export` just wrote.
latest_version() {
    ls "$1" | grep -E '^[0-9]+$' | sort -n | tail -1
}

glimpse data shapes --out "$DATA_DIR" --num-train 15000 --num-val 500 --num-test 1000 \
    --num-novel 1000 --size 64 --seed 0

glimpse train encoder --data "$DATA_DIR" --out "$RUNS_DIR/encoder" --config configs/encoder.json \
    --epochs 12

# The committed caption-nic and caption-sat came from these settings (docs/results.md).
# NIC reads the max-pooled, standardised CNN(I) of the pre-trained encoder with a
# layer-normalised LSTM at its tuned rate (3e-2): first with the encoder frozen
# (configs/caption_nic.json), training on that vector computed once, ten epochs of
# cross-entropy; then, as the NIC paper's second phase, three epochs with the encoder
# fine-tuned at a lower rate
# (configs/caption_encoder_finetune.json; caption-nic/10).
glimpse train caption --arch nic --layer-norm --lr 3e-2 --data "$DATA_DIR" \
    --out "$RUNS_DIR/nic-frozen" --config configs/caption_nic.json \
    --encoder-init "$RUNS_DIR/encoder" --epochs 10
glimpse train caption --arch nic --data "$DATA_DIR" --out "$RUNS_DIR/nic" \
    --config configs/caption_encoder_finetune.json --init-from "$RUNS_DIR/nic-frozen"
# SAT soft (caption-sat/8) reads the same frozen encoder's annotation grid, computed once,
# with a learned vector per cell, no doubly stochastic term and an attention that also
# reads the word just written (four epochs of cross-entropy, configs/caption_sat_word.json),
# then learns from its own captions by self-critical sequence training: two runs of three
# epochs, the second from the first.
glimpse train caption --arch sat-soft --data "$DATA_DIR" --out "$RUNS_DIR/sat-frozen" \
    --config configs/caption_sat_word.json --encoder-init "$RUNS_DIR/encoder"
sat="$RUNS_DIR/sat-frozen"
for round in 1 2; do
    glimpse train caption --arch sat-soft --data "$DATA_DIR" --out "$RUNS_DIR/sat-scst$round" \
        --config configs/caption_sat_scst.json --init-from "$sat"
    sat="$RUNS_DIR/sat-scst$round"
done
glimpse export "$RUNS_DIR/nic" --repository "$REPOSITORY" --name caption-nic
glimpse export "$sat" --repository "$REPOSITORY" --name caption-sat

for name in caption-nic caption-sat; do
    version="$(latest_version "$REPOSITORY/$name")"
    glimpse eval bundle "$REPOSITORY/$name/$version" --data "$DATA_DIR" --split test \
        --write-manifest
done
