#!/usr/bin/env bash
# One-command, idempotent setup of cvl_ros in the pip-only world (no ROS apt repository needed).
#
#   bash scripts/setup.sh          (what `make setup` runs)
#   CVL_ROS_DISTRO=jazzy CVL_VENV=.venv-jazzy bash scripts/setup.sh
#                                  (what `make setup ROS_DISTRO=jazzy` runs)
#
# Steps (each skipped when its stamp in .venv/.cvl-setup/ matches the hash of its inputs):
#   1. venv        create .venv with Python 3.11 (the CPU torch wheel and the ros-* wheels are cp311)
#   2. deps        pip install the pinned requirements (ROS 2 Kilted or Jazzy wheels, torch 2.13.0
#                  CPU, ...): kilted: requirements.txt + constraints.txt; jazzy:
#                  requirements-jazzy.txt + constraints-jazzy.txt. One venv holds one distribution.
#   3. cmake-patch point the wheels' CMake exports at this Python's and numpy's include folders
#   4. tf2_msgs    build the standard tf2_msgs interface when no tf2_msgs is importable
#   4b. geographic_msgs  build the standard geographic_msgs/GeoPoseWithCovarianceStamped (and
#                  the types it holds) when the environment has none
#   5. interfaces  build msg/ (cvl_ros/msg) with cmake + rosidl and install it into the venv
#   6. package     pip install -e . (editable, with the ament index marker, package.xml, launch
#                  and config files under .venv/share)
# Environment: CVL_ROS_DISTRO (kilted (default) | jazzy), CVL_VENV (default <repo>/.venv),
#              CVL_PYTHON (default python3.11),
#              CVL_SETUP_FORCE=1 (redo every step), CVL_JOBS (parallel build jobs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CVL_VENV:-$ROOT/.venv}"
PYTHON_BIN="${CVL_PYTHON:-python3.11}"
JOBS="${CVL_JOBS:-$(nproc 2>/dev/null || echo 2)}"
STAMPS="$VENV/.cvl-setup"
BUILD="$VENV/.cvl-build"
PY="$VENV/bin/python"
T0=$SECONDS

log() { printf '[setup %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
# pip warns about each package missing from the machine's local extra indexes: drop that noise.
quiet() { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# The ROS 2 distribution: which pinned requirement files step 2 installs.
DISTRO="${CVL_ROS_DISTRO:-kilted}"
case "$DISTRO" in
  kilted) REQS=requirements.txt CONSTRAINTS=constraints.txt ;;
  jazzy) REQS=requirements-jazzy.txt CONSTRAINTS=constraints-jazzy.txt ;;
  *) die "unknown ROS_DISTRO '$DISTRO': cvl_ros sets up ROS 2 'kilted' or 'jazzy' \
(e.g. make setup ROS_DISTRO=jazzy; make also takes ROS_DISTRO from the environment, where a \
sourced ROS install sets it)" ;;
esac

# sha256 over file names and contents (missing files hash as missing, so adding one changes it).
hash_files() {
  local f
  for f in "$@"; do
    printf '== %s\n' "$f"
    if [[ -f "$f" ]]; then cat "$f"; else printf '<missing>\n'; fi
  done | sha256sum | cut -d' ' -f1
}
stamp_ok() { [[ "${CVL_SETUP_FORCE:-0}" != 1 && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; printf '%s\n' "$2" >"$STAMPS/$1"; }
stamp_clear() { rm -f "$STAMPS/$1"; }

# ---------------------------------------------------------------------------------------------
# 1. venv
if [[ ! -x "$PY" ]]; then
  command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "$PYTHON_BIN not found. cvl_ros needs CPython 3.11 \
(the CPU torch wheel and the ROS 2 wheels used here are cp311). Install it (e.g. 'apt-get install \
python3.11 python3.11-venv' or pyenv) or point CVL_PYTHON at a Python 3.11 interpreter."
  "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON_BIN is not Python 3.11 ($("$PYTHON_BIN" --version 2>&1)); set CVL_PYTHON."
  log "creating $VENV with $("$PYTHON_BIN" --version 2>&1)"
  "$PYTHON_BIN" -m venv "$VENV" || die "could not create the venv (on Debian: apt-get install python3.11-venv)"
fi
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "$VENV is not a Python 3.11 venv ($("$PY" --version 2>&1)); remove it and run again."

# Serialise concurrent setups on the same venv (several shells running `make test`).
mkdir -p "$STAMPS"
exec 9>"$STAMPS/lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

# One venv holds one ROS 2 distribution (venvs set up before the distro stamp are Kilted).
HAS="$(cat "$STAMPS/distro" 2>/dev/null || { [[ -f "$STAMPS/deps" ]] && echo kilted; } || true)"
[[ -z "$HAS" || "$HAS" == "$DISTRO" ]] || die "$VENV holds ROS 2 $HAS, not $DISTRO: one venv \
holds one distribution. Use another venv (make's default for ROS_DISTRO=jazzy is .venv-jazzy, \
for kilted .venv) or remove $VENV."
printf '%s\n' "$DISTRO" >"$STAMPS/distro"

PIP=("$PY" -m pip --disable-pip-version-check)
PIP_FIND=()
[[ -d /opt/wheels ]] && PIP_FIND=(--find-links /opt/wheels)

# ---------------------------------------------------------------------------------------------
# 2. deps
DEPS_KEY="$(hash_files "$REQS" "$CONSTRAINTS" requirements-nodeps.txt)"
if stamp_ok deps "$DEPS_KEY"; then
  log "deps: up to date (ROS 2 $DISTRO)"
else
  log "deps: installing pinned requirements (ROS 2 $DISTRO wheels, torch CPU, ...)"
  # --no-compile: byte-compiling torch & co. at install time costs minutes on 2 cores; Python
  # compiles what is imported, once, on first use.
  "${PIP[@]}" install -q --no-compile "${PIP_FIND[@]}" -r "$REQS" -c "$CONSTRAINTS" 2> >(quiet >&2) \
    || die "pip install failed (torch==2.13.0+cpu comes from a local wheel folder: /opt/wheels)"
  "${PIP[@]}" install -q --no-compile --no-deps -r requirements-nodeps.txt 2> >(quiet >&2)
  stamp_set deps "$DEPS_KEY"
  stamp_clear cmake-patch
fi

# ---------------------------------------------------------------------------------------------
# 3. cmake include-path patch (the wheels name the include folders of their build container)
if stamp_ok cmake-patch "$DEPS_KEY"; then
  log "cmake-patch: up to date"
else
  "$PY" scripts/patch_cmake_paths.py "$VENV"
  stamp_set cmake-patch "$DEPS_KEY"
fi

# Build one interface package (source dir $1) with cmake into the venv prefix.
build_interface() {
  local src="$1" name="$2"
  shift 2
  local bdir="$BUILD/$name"
  log "$name: building interfaces with cmake (rosidl) into $VENV"
  rm -rf "$bdir"
  (
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    cmake -S "$src" -B "$bdir" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" "$@" >"$bdir.log" 2>&1 \
      && cmake --build "$bdir" -j "$JOBS" >>"$bdir.log" 2>&1 \
      && cmake --install "$bdir" >>"$bdir.log" 2>&1
  ) || { tail -n 40 "$bdir.log" >&2; die "$name: interface build failed (full log: $bdir.log)"; }
}
mkdir -p "$BUILD"
command -v cmake >/dev/null 2>&1 || die "cmake not found (apt-get install cmake g++)"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# ---------------------------------------------------------------------------------------------
# 4. tf2_msgs (standard interface, TFMessage only) when the environment has none
TF2_SRC="scripts/interfaces/tf2_msgs"
TF2_KEY="$DEPS_KEY-$(hash_files "$TF2_SRC/package.xml" "$TF2_SRC/CMakeLists.txt" "$TF2_SRC"/msg/*.msg)"
if stamp_ok tf2_msgs "$TF2_KEY"; then
  log "tf2_msgs: up to date"
elif [[ ! -f "$STAMPS/tf2_msgs" ]] && "$PY" -c 'import tf2_msgs.msg' >/dev/null 2>&1; then
  log "tf2_msgs: provided by the environment"
else
  build_interface "$TF2_SRC" tf2_msgs
  stamp_set tf2_msgs "$TF2_KEY"
fi

# ---------------------------------------------------------------------------------------------
# 4b. geographic_msgs (standard interface: GeoPoseWithCovarianceStamped, GeoPoseWithCovariance,
#     GeoPose, GeoPoint; no wheel exists) when the environment has none
GEO_SRC="scripts/interfaces/geographic_msgs"
GEO_KEY="$DEPS_KEY-$(hash_files "$GEO_SRC/package.xml" "$GEO_SRC/CMakeLists.txt" "$GEO_SRC"/msg/*.msg)"
if stamp_ok geographic_msgs "$GEO_KEY"; then
  log "geographic_msgs: up to date"
elif [[ ! -f "$STAMPS/geographic_msgs" ]] \
    && "$PY" -c 'from geographic_msgs.msg import GeoPoseWithCovarianceStamped' >/dev/null 2>&1; then
  log "geographic_msgs: provided by the environment"
else
  build_interface "$GEO_SRC" geographic_msgs
  stamp_set geographic_msgs "$GEO_KEY"
fi

# ---------------------------------------------------------------------------------------------
# 5. cvl_ros interfaces (msg/) -> <site-packages>/cvl_ros/msg + typesupport libraries
IF_KEY="$DEPS_KEY-$(hash_files CMakeLists.txt package.xml setup.cfg msg/*.msg)"
if stamp_ok interfaces "$IF_KEY"; then
  log "interfaces: up to date"
else
  build_interface "$ROOT" cvl_ros -DCVL_ROS_INSTALL_PYTHON=OFF
  # The editable checkout's cvl_ros/__init__.py must be the package's __init__: drop the empty
  # generated one (the site-packages folder stays a portion that extend_path adds), and the
  # generated egg-info, which would make pip see a second, un-uninstallable cvl_ros.
  rm -f "$SITE/cvl_ros/__init__.py" "$SITE"/cvl_ros/__pycache__/__init__.*.pyc
  rm -rf "$SITE"/cvl_ros-*.egg-info
  stamp_set interfaces "$IF_KEY"
fi

# ---------------------------------------------------------------------------------------------
# 6. the package itself, editable (data files: ament index marker, package.xml, launch, config)
DATA_FILES=(setup.py setup.cfg package.xml resource/cvl_ros)
while IFS= read -r -d '' f; do DATA_FILES+=("$f"); done \
  < <(find launch config -maxdepth 1 -type f -print0 2>/dev/null | sort -z)
PKG_KEY="$DEPS_KEY-$ROOT-$(hash_files "${DATA_FILES[@]}")"
if stamp_ok package "$PKG_KEY"; then
  log "package: up to date"
else
  log "package: pip install -e . (editable)"
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT" >"$BUILD/pip-editable.log" 2>&1 \
    || { tail -n 40 "$BUILD/pip-editable.log" >&2; die "editable install failed"; }
  # setuptools' editable wheels leave data_files out: install them (copies) from setup.py.
  rm -rf "$VENV/share/cvl_ros/launch" "$VENV/share/cvl_ros/config"
  "$PY" setup.py -q install_data -d "$VENV" >"$BUILD/install-data.log" 2>&1 \
    || { tail -n 40 "$BUILD/install-data.log" >&2; die "installing the data files failed"; }
  stamp_set package "$PKG_KEY"
fi

# ---------------------------------------------------------------------------------------------
# Check (cheap): the package, its interfaces and the main libraries import from any directory.
if ! (cd / && "$PY" -c 'import rclpy, cvl_ros, tf2_msgs.msg
from cvl_ros.msg import GeoPoseEstimate, Candidate
assert cvl_ros.__file__.startswith(__import__("sys").argv[1]), cvl_ros.__file__' "$ROOT") 2>"$BUILD/check.log"; then
  cat "$BUILD/check.log" >&2
  rm -f "$STAMPS/interfaces" "$STAMPS/package"
  die "import check failed; stamps cleared, run the setup again (CVL_SETUP_FORCE=1 redoes all)"
fi
log "done in $((SECONDS - T0)) s (venv: $VENV, ROS 2 $DISTRO)"
