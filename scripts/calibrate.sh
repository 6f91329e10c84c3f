#!/usr/bin/env bash
# Fit the demo model's likelihood temperature on validation towns (cvl-calibrate, docs/calibration.md).
#
# For each validation town (seed:style; seeds used by no training run, demo, test or the field
# benchmark: towns nobody evaluates on):
#   1. cvl-synth       a 500 m town of a test style and one drive
#   2. cvl-build-db    the tile database over the WHOLE mosaic (the area, not the route)
#   3. cvl-kitti2bag   a bag with 2 % odometry drift and 1 deg/100 m yaw drift
# then cvl-calibrate over all drives, writing <model>.calibration.json beside the checkpoint.
# Towns of an earlier run are reused; their databases are rebuilt when the model changed.
#
# Usage: scripts/calibrate.sh [extra cvl-calibrate flags, e.g. --overwrite --temperatures ...]
# Environment: CVL_CAL_OUT (default runs/calibration; the script's own folder, refused when it
# holds anything it did not write), CVL_CAL_TOWNS (default "301:old_town 302:hard"),
# CVL_CAL_FRAMES (default 500), CVL_CAL_MODEL (default models/cvlnet_demo), CVL_VENV.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${CVL_VENV:-$ROOT/.venv}/bin"
OUT="${CVL_CAL_OUT:-runs/calibration}"
TOWNS="${CVL_CAL_TOWNS:-301:old_town 302:hard}"
FRAMES="${CVL_CAL_FRAMES:-500}"
MODEL="${CVL_CAL_MODEL:-models/cvlnet_demo}"
T0=$SECONDS
log() { printf '[calibrate %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[calibrate] ERROR: %s\n' "$*" >&2; exit 2; }

MARK="$OUT/.cvl-calibration-work"
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" && ! -f "$MARK" ]]; then
  die "$OUT is not empty and was not written by this script; set CVL_CAL_OUT to a new folder"
fi
mkdir -p "$OUT"
touch "$MARK"
# the model's hash: a tile database of another model (an earlier town's) is rebuilt
HASH="$("$BIN/python" -c 'import sys
from cvl_ros.model.cvlnet import load_checkpoint, resolve_checkpoint
print(load_checkpoint(resolve_checkpoint(sys.argv[1]))[0].model_hash())' "$MODEL")" \
  || die "cannot load the model $MODEL"
db_hash() { "$BIN/python" -c 'import json, sys
print(json.load(open(sys.argv[1])).get("model_hash", ""))' "$1/manifest.json" 2>/dev/null || true; }
RUNS=()
for spec in $TOWNS; do
  SEED="${spec%%:*}"; STYLE="${spec#*:}"; W="$OUT/${SEED}_${STYLE}"
  mkdir -p "$W"
  # each step's output appears whole (its tool writes a temporary sibling and renames it), so
  # a complete step of an earlier run is reused and only the missing ones run: nothing is removed
  if [[ ! -f "$W/town/town.json" ]]; then
    log "$SEED $STYLE: town"
    "$BIN/cvl-synth" --out "$W/town" --seed "$SEED" --style "$STYLE" --split test --drives 1 \
      --frames-per-drive "$FRAMES" --image-size 512x128 --tile-stride 20 --quiet >"$W/synth.log" 2>&1 \
      || { tail -n 20 "$W/synth.log" >&2; die "cvl-synth failed"; }
  fi
  if [[ "$(db_hash "$W/db")" != "$HASH" ]]; then
    log "$SEED $STYLE: database over the whole mosaic (model $HASH)"
    "$BIN/cvl-build-db" --checkpoint "$MODEL" --tiles "$W/town/mosaic.png" --out "$W/db" \
      --overwrite --threads 1 --no-progress >"$W/build_db.log" 2>&1 \
      || { tail -n 20 "$W/build_db.log" >&2; die "cvl-build-db failed"; }
  fi
  if [[ ! -f "$W/bag/metadata.yaml" ]]; then
    log "$SEED $STYLE: bag"
    DRIVE="$(find "$W/town/raw_data" -mindepth 2 -maxdepth 2 -type d -name '*_sync' | head -n 1)"
    "$BIN/cvl-kitti2bag" --drive "$DRIVE" --out "$W/bag" --storage mcap --odom-drift 2.0 \
      --odom-yaw-drift 1.0 --quiet >"$W/kitti2bag.log" 2>&1 \
      || { cat "$W/kitti2bag.log" >&2; die "cvl-kitti2bag failed"; }
  fi
  RUNS+=(--run "$W/bag" "$W/db")
done
log "cvl-calibrate over $(( ${#RUNS[@]} / 3 )) drives"
OMP_NUM_THREADS=1 "$BIN/cvl-calibrate" --checkpoint "$MODEL" "${RUNS[@]}" --quiet "$@" \
  | tee "$OUT/calibrate.txt"
log "done"
