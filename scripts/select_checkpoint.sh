#!/usr/bin/env bash
# Pick a training run's checkpoint by localisation error on validation drives (not by the
# retrieval recall that cvl-train's validation reports): for each seed, a synthetic drive of the
# validation style is generated, bagged like the demo's, and every checkpoint of the run is
# scored with cvl-localize-bag (the node's Localizer, default params). Prints one line per
# (seed, checkpoint): fixes / keyframes, median and p90 position error in metres.
#   scripts/select_checkpoint.sh RUN_DIR [SEEDS] [STYLE] [FRAMES]
#   scripts/select_checkpoint.sh runs/synth_demo_v3 "31 32 33" old_town 150
set -euo pipefail
RUN="${1:?usage: scripts/select_checkpoint.sh RUN_DIR [SEEDS] [STYLE] [FRAMES]}"
SEEDS="${2:-31 32 33}"
STYLE="${3:-old_town}"
FRAMES="${4:-150}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${CVL_PYTHON:-$ROOT/.venv/bin/python}"
WORK="${CVL_SELECT_WORK:-$(mktemp -d)}"
shopt -s nullglob
CKPTS=("$RUN"/epoch*.safetensors "$RUN"/last.safetensors)
[[ ${#CKPTS[@]} -gt 0 ]] || { echo "no checkpoints in $RUN" >&2; exit 2; }
echo "seed checkpoint fixes/keyframes median_m p90_m   (work: $WORK)"
for seed in $SEEDS; do
  d="$WORK/s$seed"
  "$PY" -m cvl_ros.synth.cli --seed "$seed" --out "$d/town" --drives 1 --frames-per-drive "$FRAMES" \
    --style "$STYLE" --split test --heading-noise-deg 0.5 --image-size 512x128 --quiet
  drive=$(ls -d "$d"/town/raw_data/*/*_sync | head -1)
  "$PY" -m cvl_ros.cli.kitti2bag --drive "$drive" --out "$d/bag" --odom-drift 1.0 --quiet >/dev/null
  for ck in "${CKPTS[@]}"; do
    name=$(basename "$ck" .safetensors)
    "$PY" -m cvl_ros.cli.build_db --checkpoint "$ck" --tiles "$d/town" --split test2 \
      --out "$d/db_$name" --no-progress >/dev/null
    "$PY" -m cvl_ros.cli.localize_bag "$d/bag" --out "$d/run_$name" --db "$d/db_$name" \
      --checkpoint "$ck" --quiet >/dev/null
    "$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); \
print(sys.argv[2], sys.argv[3], f\"{s['fixes']}/{s['keyframes']}\", \
round(s['median_error_m'], 2), round(s['p90_error_m'], 2))" "$d/run_$name/summary.json" "$seed" "$name"
  done
done
