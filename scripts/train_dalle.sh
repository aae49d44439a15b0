#!/usr/bin/env bash
# Train DALL-E on the shapes world, on CPU, the way model_repository/dalle was made
# (docs/results.md, "DALL-E"): the discrete VAE on single-object and 1-4-object
# scenes, the transformer over caption words and that dVAE's codes (dense attention,
# and the paper's sparse masks beside it on the same budget), the export, and the
# judge on the test and novel splits with 1, 4 and 16 reranked candidates.
#
# Needs data/t2i (README, "Text to image"), a shapes world (DATA_DIR) and its
# pre-trained encoder (ENCODER_RUN, scripts/train_recipe.sh); the judge's region
# detector is trained on that world first unless REGIONS_RUN already holds one.
#
#   scripts/train_dalle.sh                # ~50 min dVAE + ~40 min transformer on 2 cores
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GLIMPSE="${GLIMPSE:-glimpse}"
T2I_DIR="${T2I_DIR:-data/t2i}"
DATA_DIR="${DATA_DIR:-data/shapes15k}"
RUNS_DIR="${RUNS_DIR:-runs}"
REPOSITORY="${REPOSITORY:-model_repository}"
ENCODER_RUN="${ENCODER_RUN:-$RUNS_DIR/encoder}"
REGIONS_RUN="${REGIONS_RUN:-$RUNS_DIR/regions-judge}"
RESULTS="${RESULTS:-$RUNS_DIR/dalle-judge}"
# Each run takes one core: two side by side use both without oversubscribing them.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

glimpse() { "$GLIMPSE" "$@"; }

if [ ! -d "$REGIONS_RUN/checkpoints" ]; then
    glimpse train regions --data "$DATA_DIR" --out "$REGIONS_RUN" --encoder-init "$ENCODER_RUN" \
        --config configs/regions_judge.json
fi
# The dVAE matches the encoder's features as well as the pixels (docs/results.md).
glimpse train dvae --data "$T2I_DIR" "$DATA_DIR" --out "$RUNS_DIR/dvae" \
    --config configs/dvae_feature_match.json --perceptual-init "$ENCODER_RUN"
for attention in dense sparse; do
    glimpse train dalle --data "$T2I_DIR" "$DATA_DIR" --dvae-run "$RUNS_DIR/dvae" \
        --attention "$attention" --out "$RUNS_DIR/dalle-$attention" --config configs/dalle.json &
done
wait

bundle=$(glimpse export "$RUNS_DIR/dalle-dense" --repository "$REPOSITORY" --name dalle | tail -n 1)
mkdir -p "$RESULTS"
for data in "$T2I_DIR" "$DATA_DIR"; do
    for split in test novel; do
        for candidates in 1 4 16; do
            glimpse eval judge "$bundle" --data "$data" --split "$split" --prompts 200 \
                --candidates "$candidates" --regions-run "$REGIONS_RUN" --write-manifest \
                --out "$RESULTS/$(basename "$data")-$split-c$candidates.json"
        done
    done
done
