#!/usr/bin/env bash
# make demo: the whole product on one small synthetic town, from a fresh clone.
#
#   1. cvl-synth         a seeded synthetic town (satellite mosaic) and one drive
#   2. cvl-build-db      the tile database over the WHOLE mosaic (the area, not the route: what
#                        a user has), encoded with the shipped demo model
#   3. cvl-kitti2bag     the drive as a ROS 2 bag (camera, camera_info, GPS, IMU, odometry, TF)
#   4. cvl-localize      the lifecycle node, as its own process, with use_sim_time
#   5. recorder          records the node's outputs (~/geo_pose, ~/fix, ~/pose, ~/heatmap, /tf)
#   6. cvl-replay        plays the bag with /clock
#   7. demo_report       summary (fixes, error, latency), demo_out/trajectory.png, heatmap.png
#
# Environment (all optional):
#   CVL_VENV            venv (default <repo>/.venv; `make demo` runs `make setup` first)
#   CVL_DEMO_OUT        output folder (default <repo>/demo_out; emptied first if it is a demo
#                       output: holds .cvl-demo-output or synth.log, else the demo refuses)
#   CVL_DEMO_SEED       town/drive seed (default 7)
#   CVL_DEMO_FRAMES     frames of the drive at 10 Hz (default 200)
#   CVL_DEMO_RATE       replay speed factor (default 0.25: the 2-core CPU runs the model live)
#   CVL_DEMO_MODEL      model checkpoint or its folder (default models/cvlnet_demo/)
#   CVL_DEMO_THREADS    torch threads of the node (default 2)
#   CVL_DEMO_STYLE      town style (default old_town, a test style the model was not trained on)
#   CVL_DEMO_HEADING_NOISE_DEG  sigma of the IMU heading error of the drive (default 0.5)
#   CVL_DEMO_IMAGE_SIZE camera image size WxH (default 512x128, the demo model's training size)
#   CVL_DEMO_DOMAIN_ID  ROS_DOMAIN_ID of the run (default: random in 100-199)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CVL_VENV:-$ROOT/.venv}"
BIN="$VENV/bin"
PY="$BIN/python"
OUT="${CVL_DEMO_OUT:-$ROOT/demo_out}"
SEED="${CVL_DEMO_SEED:-7}"
FRAMES="${CVL_DEMO_FRAMES:-200}"
RATE="${CVL_DEMO_RATE:-0.25}"
MODEL="${CVL_DEMO_MODEL:-$ROOT/models/cvlnet_demo}"
THREADS="${CVL_DEMO_THREADS:-2}"
STYLE="${CVL_DEMO_STYLE:-old_town}"
HEADING_NOISE="${CVL_DEMO_HEADING_NOISE_DEG:-0.5}"
IMAGE_SIZE="${CVL_DEMO_IMAGE_SIZE:-512x128}"
PARAMS="$ROOT/config/localize.yaml"
T0=$SECONDS

log() { printf '[demo %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }

[[ -x "$PY" ]] || die "no venv at $VENV: run 'make setup' (or 'make demo', which runs it)"
for tool in cvl-synth cvl-build-db cvl-kitti2bag cvl-localize cvl-replay; do
  [[ -x "$BIN/$tool" ]] || die "$BIN/$tool is missing: run 'make setup'"
done
if [[ -d "$MODEL" ]]; then  # a checkpoint folder: its model/best/last or only .safetensors
  for name in model best last checkpoint; do
    if [[ -f "$MODEL/$name.safetensors" ]]; then MODEL="$MODEL/$name.safetensors"; break; fi
  done
  if [[ -d "$MODEL" ]]; then
    MODEL="$(find "$MODEL" -maxdepth 1 -name '*.safetensors' | sort | head -n 1)"
  fi
fi
[[ -n "$MODEL" && -f "$MODEL" ]] || die "the shipped demo model is missing: ${CVL_DEMO_MODEL:-models/cvlnet_demo/}*.safetensors
  (models/cvlnet_demo/ is part of the repository; train one with cvl-train or point
  CVL_DEMO_MODEL at a checkpoint)"
[[ -f "$PARAMS" ]] || die "missing $PARAMS"

# Empty $OUT only if an earlier demo wrote it (docs/output-safety.md): never a user's folder.
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
  [[ -f "$OUT/.cvl-demo-output" || -f "$OUT/synth.log" ]] || die "$OUT is not empty and is not \
a demo output folder (no .cvl-demo-output); the demo will not delete it: set CVL_DEMO_OUT to a \
new folder, or delete it yourself"
  case "$(pwd -P)/" in "$(cd "$OUT" && pwd -P)/"*)
    die "CVL_DEMO_OUT=$OUT holds the repository; choose another folder" ;;
  esac
fi
rm -rf "$OUT"
mkdir -p "$OUT"
echo "folder of scripts/demo.sh: emptied by the next run" >"$OUT/.cvl-demo-output"
# One ROS graph per run, on this machine only; logs under demo_out.
export ROS_DOMAIN_ID="${CVL_DEMO_DOMAIN_ID:-$((100 + RANDOM % 100))}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_HOME="$OUT/ros_home"
export ROS_LOG_DIR="$OUT/ros_home/log"
# Large images between processes: Fast DDS's default 512 KiB shared-memory segments make a
# best-effort subscriber lose most KITTI-size images (see config/fastdds_large_images.xml).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds_large_images.xml}"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PYTHONUNBUFFERED=1

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -INT "$pid" 2>/dev/null || true; fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
log "1/7 synthetic town and drive (seed $SEED, $FRAMES frames)"
"$BIN/cvl-synth" --out "$OUT/town" --seed "$SEED" --style "$STYLE" --split test --drives 1 \
  --frames-per-drive "$FRAMES" --heading-noise-deg "$HEADING_NOISE" --image-size "$IMAGE_SIZE" \
  --no-tiles >"$OUT/synth.log" 2>&1 || { tail -n 30 "$OUT/synth.log" >&2; die "cvl-synth failed"; }
DRIVE="$(find "$OUT/town/raw_data" -mindepth 2 -maxdepth 2 -type d -name '*_sync' | sort | head -n 1)"
[[ -n "$DRIVE" ]] || die "cvl-synth wrote no drive under $OUT/town/raw_data"

log "2/7 tile database over the whole mosaic with $(basename "$(dirname "$MODEL")")"
"$BIN/cvl-build-db" --checkpoint "$MODEL" --tiles "$OUT/town/mosaic.png" --out "$OUT/db" \
  --threads "$THREADS" --no-progress \
  >"$OUT/build_db.log" 2>&1 || { tail -n 30 "$OUT/build_db.log" >&2; die "cvl-build-db failed"; }

log "3/7 bag of the drive"
"$BIN/cvl-kitti2bag" --drive "$DRIVE" --out "$OUT/bag" --storage mcap --odom-drift 1.0 \
  --quiet >"$OUT/kitti2bag.log" 2>&1 || { cat "$OUT/kitti2bag.log" >&2; die "cvl-kitti2bag failed"; }

log "4/7 node (cvl-localize, use_sim_time) as its own process"
OMP_NUM_THREADS="$THREADS" "$BIN/cvl-localize" --ros-args --params-file "$PARAMS" \
  -p use_sim_time:=true -p checkpoint_path:="$MODEL" -p database_path:="$OUT/db" \
  -p torch_threads:="$THREADS" \
  -r image:=/kitti/camera_color_left/image_raw \
  -r camera_info:=/kitti/camera_color_left/camera_info \
  -r odom:=/kitti/odom -r imu:=/kitti/oxts/imu -r gps/fix:=/kitti/oxts/gps/fix \
  >"$OUT/node.log" 2>&1 &
PIDS+=($!)

log "5/7 recorder of the node's outputs"
rm -f "$OUT/.recorder_ready"
"$PY" -m cvl_ros.cli.record "$OUT/outputs" --ready-file "$OUT/.recorder_ready" \
  >"$OUT/record.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do [[ -f "$OUT/.recorder_ready" ]] && break; sleep 0.1; done
[[ -f "$OUT/.recorder_ready" ]] || die "the recorder did not start (see $OUT/record.log)"

log "6/7 replay at ${RATE}x (waits for the node's image subscription)"
"$BIN/cvl-replay" "$OUT/bag" --rate "$RATE" --tail 5 --wait-timeout 180 \
  >"$OUT/replay.log" 2>&1 || { tail -n 30 "$OUT/replay.log" "$OUT/node.log" >&2; die "cvl-replay failed"; }
kill -0 "${PIDS[0]}" 2>/dev/null || { tail -n 30 "$OUT/node.log" >&2; die "the node exited early"; }
grep -q "waited" "$OUT/replay.log" && sed -n '1p' "$OUT/replay.log" | sed 's/^/         /'

# Stop the node and the recorder with SIGINT (the recorder finishes its bag).
cleanup
for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PIDS=()

log "7/7 report"
"$PY" -m cvl_ros.cli.demo_report --outputs "$OUT/outputs" --bag "$OUT/bag" --out "$OUT" \
  --extra "{\"seed\": $SEED, \"frames\": $FRAMES, \"replay_rate\": $RATE, \"demo_wall_s\": $((SECONDS - T0))}" \
  | tee "$OUT/summary.txt"
FIXES="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["fixes"])' "$OUT/summary.json")"
if [[ "$FIXES" == 0 ]]; then
  grep -E "ERROR|not localizing" "$OUT/node.log" | tail -n 5 >&2 || true
  die "the node gave no fix (see $OUT/node.log and /diagnostics in $OUT/outputs)"
fi
PICTURES="$OUT/trajectory.png"
if [[ -f "$OUT/heatmap.png" ]]; then
  PICTURES+=", $OUT/heatmap.png"
else
  echo "demo: warning: the node published no ~/heatmap, so there is no heatmap.png" >&2
fi
[[ -f "$OUT/trajectory.png" ]] || die "no trajectory.png was written (see the report above)"
log "done in $((SECONDS - T0)) s: $PICTURES, $OUT/summary.json"
