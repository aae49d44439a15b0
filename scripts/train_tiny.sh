#!/usr/bin/env bash
# The README's "Train your own" path at tiny scale: every family trained on a few
# hundred images for one epoch (the GANs: a few steps) with the small models of
# configs/tiny/, exported into a scratch model repository with the bundle path
# `glimpse export` prints, and evaluated there. It shows that the path runs end to
# end in a few minutes on a CPU (tests/scripts/test_train_tiny.py runs it); the
# models it makes are poor.
#
#   scripts/train_tiny.sh [WORK_DIR]      # default runs/tiny: data/, runs/, repository/
#   glimpse serve --repository runs/tiny/repository        # serve what it made
#
# Run from anywhere; relative paths are taken from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORK="${1:-runs/tiny}"
GLIMPSE="${GLIMPSE:-glimpse}"
DATA="$WORK/data/shapes"
T2I="$WORK/data/t2i"
RUNS="$WORK/runs"
REPO="$WORK/repository"
QUICK=(--epochs 1)  # the run-length knob of every `glimpse train`; --steps N stops earlier
# Tiny models gain nothing from more threads, and on a busy machine threads that wait
# for each other make a step many times slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

glimpse() { "$GLIMPSE" "$@"; }

# `glimpse export` prints the bundle directory on its last line.
export_run() {  # RUN NAME -> the new bundle's directory
    glimpse export "$1" --repository "$REPO" --name "$2" | tail -n 1
}

world() {  # DIR ARGS...: a small shapes world
    local dir=$1
    shift
    glimpse data shapes --out "$dir" --num-train 300 --num-val 40 --num-test 40 --num-novel 40 \
        --seed 0 --workers 1 --no-progress "$@"
}

# -- captions, regions, VQA, alignment, retrieval on one world ----------------------------
world "$DATA" --size 64
glimpse train encoder --data "$DATA" --out "$RUNS/encoder" --config configs/tiny/encoder.json \
    "${QUICK[@]}"
glimpse train caption --arch sat-soft --layer-norm --data "$DATA" --out "$RUNS/sat" \
    --config configs/tiny/caption_sat.json --encoder-init "$RUNS/encoder" "${QUICK[@]}"
bundle=$(export_run "$RUNS/sat" caption-sat)
glimpse eval bundle "$bundle" --data "$DATA" --split test --beam-size 3 --no-meteor \
    --write-manifest

glimpse train regions --data "$DATA" --out "$RUNS/regions" --encoder-init "$RUNS/encoder" \
    --config configs/tiny/regions.json "${QUICK[@]}"
glimpse features regions --run "$RUNS/regions" --data "$DATA"
glimpse train caption --arch updown --data "$DATA" --out "$RUNS/updown" \
    --config configs/tiny/caption_updown.json --regions-run "$RUNS/regions" \
    --features "$DATA/features/regions" "${QUICK[@]}"
glimpse train caption --arch updown --data "$DATA" --out "$RUNS/updown-scst" \
    --config configs/tiny/caption_updown_scst.json --init-from "$RUNS/updown" \
    --regions-run "$RUNS/regions" --features "$DATA/features/regions" --steps 3
bundle=$(export_run "$RUNS/updown-scst" caption-updown)
glimpse eval bundle "$bundle" --data "$DATA" --split test --beam-size 3 --no-meteor \
    --write-manifest

glimpse train vqa --data "$DATA" --out "$RUNS/vqa" --config configs/tiny/vqa.json "${QUICK[@]}"
bundle=$(export_run "$RUNS/vqa" vqa-updown)
glimpse eval vqa-bundle "$bundle" --data "$DATA" --splits test novel --write-manifest

glimpse train alignment --data "$DATA" --regions-run "$RUNS/regions" --out "$RUNS/align" \
    --config configs/tiny/alignment.json "${QUICK[@]}"
bundle=$(export_run "$RUNS/align" align-brnn)
glimpse eval alignment "$bundle" --data "$DATA" --split test --write-manifest

glimpse train retrieval --data "$DATA" --out "$RUNS/vse" --encoder-init "$RUNS/encoder" \
    --loss max --config configs/tiny/retrieval.json "${QUICK[@]}"
bundle=$(export_run "$RUNS/vse" retrieval-vse)
glimpse index "$bundle" --data "$DATA" --split test
glimpse eval retrieval "$bundle" --data "$DATA" --split test --write-manifest

# -- video: clips of the shapes world on the encoder's frame features -------------------------
CLIPS="$WORK/data/clips"
glimpse data clips --out "$CLIPS" --num-train 60 --num-val 12 --num-test 12 --num-novel 12 \
    --frames 8 --seed 0 --workers 1 --no-progress
glimpse features clips --encoder-run "$RUNS/encoder" --data "$CLIPS"
glimpse train activity --input rgb --data "$CLIPS" --out "$RUNS/activity-rgb" \
    --config configs/tiny/activity.json "${QUICK[@]}"
glimpse train activity --input motion --data "$CLIPS" --out "$RUNS/activity-motion" \
    --config configs/tiny/activity.json "${QUICK[@]}"
glimpse fuse activity --rgb-run "$RUNS/activity-rgb" \
    --motion-run "$RUNS/activity-motion" --out "$RUNS/activity-fusion"
bundle=$(export_run "$RUNS/activity-fusion" activity-lrcn)
glimpse eval activity "$bundle" --data "$CLIPS" --splits test novel --write-manifest
glimpse train video-caption --arch lstm-encoder --data "$CLIPS" --out "$RUNS/video-lstm" \
    --config configs/tiny/video_caption.json "${QUICK[@]}"
bundle=$(export_run "$RUNS/video-lstm" video-caption-lrcn)
glimpse eval video-caption "$bundle" --data "$CLIPS" --splits test novel --beam-size 3 \
    --write-manifest

# -- text to image: single-object scenes at 128 px ------------------------------------------
world "$T2I" --size 128 --max-objects 1
glimpse train text-encoder --data "$T2I" --out "$RUNS/text-encoder" \
    --encoder-init "$RUNS/encoder" --config configs/tiny/text_encoder.json "${QUICK[@]}"
glimpse train gan --variant gan-int-cls --data "$T2I" --text-encoder "$RUNS/text-encoder" \
    --out "$RUNS/gan-int-cls" --config configs/tiny/gan.json --steps 20
glimpse train stackgan --stage 1 --data "$T2I" --text-encoder "$RUNS/text-encoder" \
    --out "$RUNS/stackgan-1" --config configs/tiny/stackgan.json --steps 10
glimpse train stackgan --stage 2 --stage1-run "$RUNS/stackgan-1" --data "$T2I" \
    --out "$RUNS/stackgan-2" --config configs/tiny/stackgan.json --steps 5
for run in gan-int-cls stackgan-2; do
    bundle=$(export_run "$RUNS/$run" "${run%-2}")
    glimpse eval generation "$bundle" --data "$T2I" --split test --prompts 16 \
        --samples-per-prompt 2 --tagger "$RUNS/encoder" --text-encoder "$RUNS/text-encoder" \
        --write-manifest
done

# -- DALL-E: the dVAE, then the transformer over its codes, on both worlds --------------------
glimpse train dvae --data "$T2I" "$DATA" --out "$RUNS/dvae" --config configs/tiny/dvae.json \
    "${QUICK[@]}"
glimpse train dalle --data "$T2I" "$DATA" --dvae-run "$RUNS/dvae" --out "$RUNS/dalle" \
    --config configs/tiny/dalle.json "${QUICK[@]}"
bundle=$(export_run "$RUNS/dalle" dalle)
glimpse eval judge "$bundle" --data "$T2I" --split test --prompts 8 \
    --regions-run "$RUNS/regions" --write-manifest

echo "bundles in $REPO:"
ls -d "$REPO"/*/*
