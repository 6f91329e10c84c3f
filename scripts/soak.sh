#!/usr/bin/env bash
# make soak: the localizer node on a looped bag for CVL_SOAK_MINUTES (default 20) minutes.
#
#   python -m cvl_ros.cli.soak builds a cvl-synth drive (the demo's: seed 7, 200 frames, old_town,
#   512x128), its tile database (shipped demo model) and its bag (cvl-kitti2bag), then runs the
#   node (use_sim_time) and cvl-replay --loop --rate 0.25 as their own processes and checks: the
#   node's RSS grows <= 5 % after the warm-up, no exception in its log, map->odom continuous
#   within each loop (stamps never decrease, no gap > 2 s), every loop restart handled.
#   Results: $CVL_SOAK_OUT/soak.json, soak.png (RSS over time), rss.csv, tf_map_odom.csv, logs.
#
# Environment (all optional):
#   CVL_VENV           venv (default <repo>/.venv; `make soak` runs `make setup` first)
#   CVL_SOAK_MINUTES   minutes of looping (default 20)
#   CVL_SOAK_OUT       output folder (default <repo>/runs/soak; an earlier soak output there is
#                      replaced, any other non-empty folder is refused: docs/output-safety.md)
#   CVL_SOAK_ARGS      more flags for python -m cvl_ros.cli.soak (e.g. "--bag B --db D --rate 0.5")
# Exit status: 0 when every check holds, 1 when one fails (results written), 2 for a user error.
# On a shared machine run it niced: nice -n 10 make soak
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CVL_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || { echo "[soak] ERROR: no venv at $VENV: run 'make setup'" >&2; exit 1; }
export CVL_SOAK_MINUTES="${CVL_SOAK_MINUTES:-20}"
OUT="${CVL_SOAK_OUT:-$ROOT/runs/soak}"
# shellcheck disable=SC2086  # CVL_SOAK_ARGS is a list of flags
exec "$PY" -m cvl_ros.cli.soak --out "$OUT" --overwrite --minutes "$CVL_SOAK_MINUTES" \
  ${CVL_SOAK_ARGS:-}
