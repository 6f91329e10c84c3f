#!/usr/bin/env bash
# make field: the field benchmark (docs/field.md). The localizer measured as its users will use
# it, on seeded towns the model never saw, beside the baselines of the same run.
#
# For each town (seed:style):
#   1. cvl-synth         a 500 m town of a test style and one long drive (seeds and styles not
#                        used by training, validation, the demo or the tests)
#   2. cvl-build-db      the tile database over the WHOLE mosaic (the area, not the route)
#   3. cvl-kitti2bag     the drive as a bag with 2 % odometry drift and 1 deg/100 m yaw drift
#   4. cvl-localize-bag  GPS only to initialise (--gps-init-only), the same without any IMU
#                        (--imu-topic=: the heading from the GPS course and the track), and
#                        from a global start (--no-gps-prior): summary.json with the field
#                        metrics and the plots
# then field_summary.json and field_summary.md: one table of the summary keys per town and run.
#
# Usage: scripts/field.sh [--out DIR] [--towns "SEED:STYLE ..."] [--frames N] [--overwrite]
#                         [--threads N] [--no-global-start] [--skip-no-imu]
# Environment (the same knobs; flags win):
#   CVL_FIELD_OUT        output folder (default <repo>/runs/field, ignored by git)
#   CVL_FIELD_TOWNS      towns as "SEED:STYLE ..." (default "201:old_town 202:hard")
#   CVL_FIELD_FRAMES     10 Hz frames per drive (default 1000: about 0.8 km)
#   CVL_FIELD_MODEL      model checkpoint or its folder (default models/cvlnet_demo/)
#   CVL_FIELD_THREADS    torch threads of each tool (default 1)
#   CVL_FIELD_IMAGE_SIZE camera image size WxH (default 512x128, the demo model's)
#   CVL_FIELD_GLOBAL_START  1 (default) = also run from a global start without GPS
#   CVL_FIELD_NO_IMU     1 (default) = also run without any IMU (GPS to initialise)
#   CVL_FIELD_OVERWRITE  1 = replace an earlier output of this script (as --overwrite)
#
# Output safety (docs/output-safety.md, cvl_ros/outputs.py): the script writes only into its
# output folder. It refuses a non-empty folder it did not write; an earlier output of its own
# is replaced only with --overwrite, and only when it holds nothing but what the script wrote
# (recorded in the folder's .cvl-output.json); otherwise it stops and names the foreign files.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CVL_VENV:-$ROOT/.venv}"
BIN="$VENV/bin"
PY="$BIN/python"
OUT="${CVL_FIELD_OUT:-$ROOT/runs/field}"
TOWNS="${CVL_FIELD_TOWNS:-201:old_town 202:hard}"
FRAMES="${CVL_FIELD_FRAMES:-1000}"
MODEL="${CVL_FIELD_MODEL:-$ROOT/models/cvlnet_demo}"
THREADS="${CVL_FIELD_THREADS:-1}"
IMAGE_SIZE="${CVL_FIELD_IMAGE_SIZE:-512x128}"
GLOBAL_START="${CVL_FIELD_GLOBAL_START:-1}"
NO_IMU="${CVL_FIELD_NO_IMU:-1}"
OVERWRITE="${CVL_FIELD_OVERWRITE:-0}"
TOOL="cvl-field"
T0=$SECONDS

log() { printf '[field %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[field] ERROR: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --towns) TOWNS="$2"; shift 2 ;;
    --frames) FRAMES="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --overwrite) OVERWRITE=1; shift ;;
    --no-global-start) GLOBAL_START=0; shift ;;
    --skip-no-imu) NO_IMU=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ "$FRAMES" =~ ^[0-9]+$ && "$FRAMES" -ge 50 ]] || die "--frames must be a whole number >= 50"
[[ "$THREADS" =~ ^[0-9]+$ && "$THREADS" -ge 1 ]] || die "--threads must be a whole number >= 1"
for spec in $TOWNS; do
  [[ "$spec" =~ ^[0-9]+:(old_town|hard|suburb|downtown)$ ]] \
    || die "bad town '$spec': expected SEED:STYLE, e.g. 201:old_town"
done

[[ -x "$PY" ]] || die "no venv at $VENV: run 'make setup' (or 'make field', which runs it)"
for tool in cvl-synth cvl-build-db cvl-kitti2bag cvl-localize-bag; do
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
[[ -n "$MODEL" && -f "$MODEL" ]] || die "model checkpoint not found: ${CVL_FIELD_MODEL:-models/cvlnet_demo/}"
OUT="$("$PY" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$OUT")"

# ---------------------------------------------------------------------------------------------
# Output folder: claim it under the project's output rule (cvl_ros.outputs), or refuse.
"$PY" - "$OUT" "$TOOL" "$OVERWRITE" "$MODEL" <<'EOF' || exit 2
import sys
from pathlib import Path

out, tool, overwrite, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]
try:
    from cvl_ros.outputs import OutputError, check_output, remove_output, write_marker
except ImportError:  # no shared rule in this checkout: refuse any non-empty folder
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        sys.exit(f"field: error: {out} exists and is not empty; choose a new folder "
                 "(--out) or delete it yourself")
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(0)
try:
    state = check_output(out, tool=tool, inputs=[model], overwrite=overwrite)
    if state == "replace" and not remove_output(out, tool=tool):
        raise OutputError(f"--out {out}: could not remove the earlier {tool} output; "
                          "delete it yourself")
except OutputError as exc:
    sys.exit(f"field: error: {exc}")
out.mkdir(parents=True, exist_ok=True)
write_marker(out, tool, [])
EOF

OWNED=()  # folders this run created inside $OUT (everything in them was written by this run)
own() {  # record in $OUT's marker every entry under the folders this run created
  [[ ${#OWNED[@]} -gt 0 ]] || return 0
  "$PY" - "$OUT" "$TOOL" "${OWNED[@]}" <<'EOF' || true
import os
import sys
from pathlib import Path

try:
    from cvl_ros.outputs import read_marker, write_marker
except ImportError:
    sys.exit(0)
out, tool = Path(sys.argv[1]), sys.argv[2]
files = set((read_marker(out) or {}).get("files", []))
for rel in sys.argv[3:]:
    p = out / rel
    if p.is_file():
        files.add(rel)
    elif p.is_dir():
        files.add(rel.rstrip("/") + "/")
        for dirpath, dirnames, filenames in os.walk(p):
            r = Path(dirpath).relative_to(out)
            files |= {(r / d).as_posix() + "/" for d in dirnames}
            files |= {(r / f).as_posix() for f in filenames}
write_marker(out, tool, files)
EOF
}
trap own EXIT

export OMP_NUM_THREADS="$THREADS"
export PYTHONUNBUFFERED=1
log "output: $OUT; towns: $TOWNS; $FRAMES frames each; model $(basename "$(dirname "$MODEL")")"

RUNS=()
for spec in $TOWNS; do
  SEED="${spec%%:*}"
  STYLE="${spec#*:}"
  NAME="${SEED}_${STYLE}"
  W="$OUT/$NAME"
  [[ ! -e "$W" ]] || die "$W exists (listed twice in --towns?)"
  mkdir -p "$W/logs"
  OWNED+=("$NAME")

  log "$NAME 1/4 town and a $FRAMES-frame drive (cvl-synth --seed $SEED --style $STYLE)"
  "$BIN/cvl-synth" --out "$W/town" --seed "$SEED" --style "$STYLE" --split test --drives 1 \
    --frames-per-drive "$FRAMES" --image-size "$IMAGE_SIZE" --tile-stride 20 --quiet \
    >"$W/logs/synth.log" 2>&1 || { tail -n 30 "$W/logs/synth.log" >&2; die "cvl-synth failed"; }
  own
  DRIVE="$(find "$W/town/raw_data" -mindepth 2 -maxdepth 2 -type d -name '*_sync' | sort | head -n 1)"
  [[ -n "$DRIVE" ]] || die "cvl-synth wrote no drive under $W/town/raw_data"

  log "$NAME 2/4 tile database over the whole mosaic"
  "$BIN/cvl-build-db" --checkpoint "$MODEL" --tiles "$W/town/mosaic.png" --out "$W/db" \
    --threads "$THREADS" --no-progress \
    >"$W/logs/build_db.log" 2>&1 || { tail -n 30 "$W/logs/build_db.log" >&2; die "cvl-build-db failed"; }
  own

  log "$NAME 3/4 bag (2 % odometry drift, 1 deg/100 m yaw drift)"
  "$BIN/cvl-kitti2bag" --drive "$DRIVE" --out "$W/bag" --storage mcap --odom-drift 2.0 \
    --odom-yaw-drift 1.0 --quiet \
    >"$W/logs/kitti2bag.log" 2>&1 || { cat "$W/logs/kitti2bag.log" >&2; die "cvl-kitti2bag failed"; }
  own

  MODES=("gps_init:--gps-init-only")
  [[ "$NO_IMU" == 1 ]] && MODES+=("no_imu:--gps-init-only --imu-topic=")
  [[ "$GLOBAL_START" == 1 ]] && MODES+=("global_start:--no-gps-prior")
  for mode in "${MODES[@]}"; do
    RUN="${mode%%:*}"
    read -r -a FLAGS <<<"${mode#*:}"
    log "$NAME 4/4 cvl-localize-bag ${FLAGS[*]}"
    "$BIN/cvl-localize-bag" "$W/bag" --out "$W/$RUN" --checkpoint "$MODEL" --db "$W/db" \
      --mosaic "$W/town/mosaic.png" --threads "$THREADS" --quiet "${FLAGS[@]}" \
      >"$W/logs/localize_$RUN.log" 2>&1 \
      || { tail -n 30 "$W/logs/localize_$RUN.log" >&2; die "cvl-localize-bag failed"; }
    own
    sed -n '1p' "$W/logs/localize_$RUN.log" | sed 's/^/         /'
    RUNS+=("$NAME/$RUN")
  done
done

log "tables: field_summary.json, field_summary.md"
OWNED+=("field_summary.json" "field_summary.md")
"$PY" - "$OUT" "$FRAMES" "$MODEL" "$((SECONDS - T0))" "${RUNS[@]}" <<'EOF'
import json
import sys
from pathlib import Path

out, frames, model, wall = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
runs = sys.argv[5:]
KEYS = [
    ("distance_travelled_m", "distance travelled (m)", 0),
    ("keyframes", "keyframes", 0),
    ("fixes", "fixes (TRACKING + LOW_CONFIDENCE)", 0),
    ("tracking_fixes", "TRACKING fixes", 0),
    ("median_error_m", "median error (m)", 2),
    ("p95_error_m", "p95 error (m)", 2),
    ("max_error_m", "max error (m)", 2),
    ("median_error_tracking_m", "median error, TRACKING (m)", 2),
    ("ellipse95_coverage", "95 % ellipse coverage", 3),
    ("ellipse95_coverage_tracking", "95 % ellipse coverage, TRACKING", 3),
    ("nees_mean", "mean NEES (2 = consistent)", 1),
    ("along_track_rms_error_m", "along-track RMS error (m)", 2),
    ("cross_track_rms_error_m", "across-track RMS error (m)", 2),
    ("along_track_z_rms", "along-track z RMS (1 = honest)", 2),
    ("cross_track_z_rms", "across-track z RMS (1 = honest)", 2),
    ("mean_east_error_m", "mean error east: constant offset (m)", 2),
    ("mean_north_error_m", "mean error north: constant offset (m)", 2),
    ("tracking_fixes_over_10m", "TRACKING fixes > 10 m off", 0),
    ("first_tracking_distance_m", "distance to the first TRACKING fix (m)", 1),
    ("odometry_only_median_error_m", "dead reckoning: median error (m)", 2),
    ("odometry_only_p95_error_m", "dead reckoning: p95 error (m)", 2),
    ("odometry_only_max_error_m", "dead reckoning: max error (m)", 2),
    ("gps_median_error_m", "GPS fix: median error (m)", 2),
    ("gps_p95_error_m", "GPS fix: p95 error (m)", 2),
    ("gps_max_error_m", "GPS fix: max error (m)", 2),
    ("single_window_median_error_m", "single window: median error (m)", 2),
    ("single_window_p95_error_m", "single window: p95 error (m)", 2),
    ("yaw_median_error_deg", "yaw: median error (deg)", 2),
    ("yaw_p95_error_deg", "yaw: p95 error (deg)", 2),
    ("yaw_coverage95", "yaw: 95 % coverage", 3),
    ("gps_priors_used", "GPS priors used", 0),
    ("wall_s", "cvl-localize-bag wall time (s)", 0),
]
table = []
for run in runs:
    s = json.loads((out / run / "summary.json").read_text())
    town = json.loads((out / run.split("/")[0] / "town" / "town.json").read_text())
    table.append({"run": run, "seed": town["seed"], "style": town["style"],
                  "drive_length_m": town["drives"][0]["length_m"],
                  "gps_noise_sigma_m": town["drives"][0]["gps_noise_sigma_m"],
                  "heading_noise_sigma_deg": town["drives"][0]["heading_noise_sigma_deg"],
                  "gps_prior": s.get("gps_prior"),
                  "plots": [f"{run}/{p}" for p in s.get("plots", [])],
                  **{k: s.get(k) for k, _, _ in KEYS}})
(out / "field_summary.json").write_text(json.dumps(
    {"frames": frames, "model": model, "script_wall_s": wall, "runs": table}, indent=2) + "\n")


def cell(v, nd):
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


lines = ["| | " + " | ".join(r["run"] for r in table) + " |",
         "|---|" + "---|" * len(table),
         "| town (seed, style) | " + " | ".join(f"{r['seed']}, {r['style']}" for r in table)
         + " |",
         "| GPS | " + " | ".join(str(r["gps_prior"]) for r in table) + " |"]
for key, label, nd in KEYS:
    lines.append(f"| {label} | " + " | ".join(cell(r[key], nd) for r in table) + " |")
(out / "field_summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
own
log "done in $((SECONDS - T0)) s: $OUT/field_summary.md, plots in $OUT/<town>/<run>/"
