# cvl_ros: one-command setup, tests, lint and demo (pip-only world; see docs/setup.md).
#   make setup   create .venv and install everything (idempotent: seconds when nothing changed)
#   make test    setup + lint + the whole test suite
#   make lint    setup + ruff
#   make demo    setup + scripts/demo.sh
#   make field   setup + scripts/field.sh (the field benchmark; FIELD_ARGS=... passes flags)
#   make soak    setup + scripts/soak.sh (node on a looped bag, CVL_SOAK_MINUTES=20; runs/soak)
# ROS_DISTRO=kilted (default) | jazzy picks the ROS 2 distribution; one venv holds one, so the
# default VENV is .venv for kilted and .venv-jazzy for jazzy (make test ROS_DISTRO=jazzy).
SHELL := /bin/bash
ROS_DISTRO ?= kilted
VENV ?= $(if $(filter jazzy,$(ROS_DISTRO)),.venv-jazzy,.venv)
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q

# DDS isolation for tests (test/conftest.py sets the same defaults when pytest runs alone).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export AMENT_PREFIX_PATH := $(abspath $(VENV))$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH),)

.PHONY: setup test lint demo field soak

setup:
	@CVL_VENV="$(abspath $(VENV))" CVL_ROS_DISTRO="$(ROS_DISTRO)" bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	CVL_VENV="$(abspath $(VENV))" bash scripts/demo.sh

field: setup
	CVL_VENV="$(abspath $(VENV))" bash scripts/field.sh $(FIELD_ARGS)

soak: setup
	CVL_VENV="$(abspath $(VENV))" bash scripts/soak.sh
