# lip_det developer tasks; `make help` lists them.
#
# Every target runs in a project virtual environment, .venv (git-ignored), created on first use
# with the pinned torch/torchvision, detectron2, lip_det (editable) and its requirements
# (pycocotools, fvcore, faster-coco-eval, ...), pytest and ruff. Later runs reuse it; it is
# updated when setup.py, lip_det/layers/csrc, tools/install_detectron2.py or the settings below change.
#
# To use an environment you already have (with torch, torchvision and detectron2 installed):
#     make test PYTHON=/path/to/python
# installs only lip_det into it (editable, --no-deps), plus pytest/ruff if a target needs them.
# If that environment already has lip_det from another checkout, make stops rather than re-point
# it; REINSTALL=1 installs this checkout anyway (also to rebuild lip_det's C++ kernels after
# changing lip_det/layers/csrc). PYTHON is taken from the make command line only, never from the shell
# environment.
#
# Upstream detectron2 HEAD: `make test-upstream` builds a second venv, .venv-head, with upstream
# detectron2 built from source (its C++ ops included; a few minutes on 2 cores) and runs the tests
# there. The source is DETECTRON2_SOURCE= if given, else the archive DETECTRON2_TARBALL (default:
# the newest ../shared/vendor/detectron2-*.tar.gz, made by `git archive --prefix=detectron2/`),
# extracted under build/upstream/ (git-ignored). With neither it prints one line and does nothing.
# Any other venv works the same way: make install VENV=.venv-x DETECTRON2_SOURCE=/path/to/clone

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# ---- settings (override on the command line: make install DETECTRON2_SOURCE=...) ----------------
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
# Upstream detectron2 to build (with its C++ extension): a git URL such as
# git+https://github.com/facebookresearch/detectron2.git, or the path of a local clone.
# Empty: detectron2's v0.6 release code from the package index, pure Python (see
# tools/install_detectron2.py).
DETECTRON2_SOURCE ?=
# More packages for .venv, e.g. opencv-python-headless for detectron2's Visualizer
VENV_EXTRA_PACKAGES ?=
# Python that creates .venv
BOOTSTRAP_PYTHON ?= python3
VENV ?= .venv
# make test-upstream: its venv, and the detectron2 source archive it extracts when no
# DETECTRON2_SOURCE is given (empty: none found, the target skips)
UPSTREAM_VENV ?= .venv-head
ifeq ($(origin DETECTRON2_TARBALL),undefined)
DETECTRON2_TARBALL := $(firstword $(shell ls -t ../shared/vendor/detectron2-*.tar.gz 2>/dev/null))
endif
# parallel compile jobs for detectron2's and lip_det's C++ extensions (torch's cpp_extension)
ifeq ($(origin MAX_JOBS),undefined)
MAX_JOBS := $(shell nproc 2>/dev/null || echo 2)
endif
DEMO_ARGS ?=
# make compare: seeds per demo model, and more tools/demo.py arguments
SEEDS ?= 3
COMPARE_ARGS ?=
PYTEST_ARGS ?=
PIP_ARGS ?= $(if $(CI),--progress-bar off)

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1
export MAX_JOBS
ifneq ($(CI),)
# also for the pip runs of tools/install_detectron2.py
export PIP_PROGRESS_BAR := off
endif

# test-upstream's detectron2: DETECTRON2_SOURCE as given, else DETECTRON2_TARBALL extracted into
# build/upstream/NAME/detectron2 (another archive, or a newer file of the same name, is extracted
# again and rebuilds detectron2 in the venv).
UPSTREAM_DIR = build/upstream/$(patsubst %.tar.gz,%,$(patsubst %.tgz,%,$(notdir $(DETECTRON2_TARBALL))))
UPSTREAM_STAMP = $(if $(DETECTRON2_SOURCE),,$(if $(DETECTRON2_TARBALL),$(UPSTREAM_DIR)/.extracted))
UPSTREAM_SOURCE = $(or $(DETECTRON2_SOURCE),$(if $(UPSTREAM_STAMP),$(CURDIR)/$(UPSTREAM_DIR)/detectron2))
ifneq ($(filter test-upstream,$(MAKECMDGOALS)),)
ifeq ($(origin PYTHON),command line)
$(error test-upstream builds its own venv ($(UPSTREAM_VENV)): leave out PYTHON=)
endif
ifneq ($(UPSTREAM_STAMP),)
ifeq ($(wildcard $(DETECTRON2_TARBALL)),)
$(error DETECTRON2_TARBALL=$(DETECTRON2_TARBALL): no such file)
endif
endif
endif

ifeq ($(origin PYTHON),command line)
PY := $(PYTHON)
ENV := external-env
else
PY := $(VENV)/bin/python
ENV := $(VENV)/.lip_det-installed
endif

# ---- targets -------------------------------------------------------------------------------------
.PHONY: help install test test-upstream lint format demo compare info clean-venv external-env FORCE

help: ## list the targets and settings
	@echo "usage: make TARGET [PYTHON=/path/to/python] [DETECTRON2_SOURCE=git-url-or-dir] [...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' \
		$(firstword $(MAKEFILE_LIST))
	@echo
	@echo "settings: TORCH_VERSION=$(TORCH_VERSION) TORCHVISION_VERSION=$(TORCHVISION_VERSION)"
	@echo "          DETECTRON2_SOURCE=$(or $(DETECTRON2_SOURCE),(package index, v0.6 code))"
	@echo "          test-upstream: UPSTREAM_VENV=$(UPSTREAM_VENV)" \
		"DETECTRON2_TARBALL=$(or $(DETECTRON2_TARBALL),(none found))"
	@echo "          python: $(PY)"

install: $(ENV) ## create or update the environment (.venv, or lip_det only into PYTHON=)

test: $(ENV) ## run the tests (pytest; PYTEST_ARGS=... passes options)
	@$(PY) -c 'import pytest' 2>/dev/null || $(PY) -m pip install $(PIP_ARGS) pytest
	$(PY) -m pytest $(PYTEST_ARGS)

# The sub-make sees VENV=$(UPSTREAM_VENV) and the source; all else (PYTEST_ARGS=...) passes through.
test-upstream: $(UPSTREAM_STAMP) ## build .venv-head with upstream detectron2, run the tests there
ifeq ($(UPSTREAM_SOURCE),)
	@echo "upstream detectron2 leg skipped: no ../shared/vendor/detectron2-*.tar.gz"
else
	@echo "== upstream detectron2 from $(or $(DETECTRON2_SOURCE),$(DETECTRON2_TARBALL)) in $(UPSTREAM_VENV)"
	@$(MAKE) --no-print-directory info test VENV='$(UPSTREAM_VENV)' \
		DETECTRON2_SOURCE='$(UPSTREAM_SOURCE)' D2_SOURCE_STAMP='$(UPSTREAM_STAMP)'
endif

lint: $(ENV) ## ruff check + ruff format --check
	@$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install $(PIP_ARGS) ruff
	@status=0; \
	(set -x; $(PY) -m ruff check .) || status=1; \
	(set -x; $(PY) -m ruff format --check .) || status=1; \
	exit $$status

format: $(ENV) ## sort imports and format the code with ruff
	@$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install $(PIP_ARGS) ruff
	$(PY) -m ruff check --select I --fix .
	$(PY) -m ruff format .

demo: $(ENV) ## run tools/demo.py (DEMO_ARGS=... passes arguments)
	$(PY) tools/demo.py $(DEMO_ARGS)

compare: $(ENV) ## train SEEDS seeds of each demo model, multi-seed report in output/compare
	$(PY) tools/demo.py --seeds $(SEEDS) --output-dir output/compare $(COMPARE_ARGS)

info: $(ENV) ## print versions and the active detectron2 compatibility fixes
	$(PY) -m lip_det.collect_env

clean-venv: ## delete .venv (VENV=.venv-head: that one)
	rm -rf -- "./$(VENV)"

# ---- the project venv ----------------------------------------------------------------------------
VPY := $(VENV)/bin/python
ENV_SETTINGS := $(BOOTSTRAP_PYTHON) torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION) \
	detectron2=$(DETECTRON2_SOURCE) extra=$(VENV_EXTRA_PACKAGES)

# Rewritten only when the settings change, so that the stamp below sees them as a newer file.
$(VENV)/.settings: FORCE
	@mkdir -p $(VENV)
	@echo '$(ENV_SETTINGS)' | cmp -s - $@ || echo '$(ENV_SETTINGS)' > $@

# detectron2 is (re)installed when the venv is new, the settings or the install script changed, or
# (test-upstream) the archive was extracted anew; without DETECTRON2_SOURCE the script keeps an
# installed detectron2 unless told --force.
D2_SOURCE_STAMP ?=
D2_CHANGED = $(filter $(VENV)/.settings tools/install_detectron2.py $(D2_SOURCE_STAMP),$?)
D2_INSTALL = $(if $(DETECTRON2_SOURCE),--source '$(DETECTRON2_SOURCE)', \
	$(if $(filter tools/install_detectron2.py,$?),--force))

# lip_det is reinstalled (its C++ kernels rebuilt) when setup.py or lip_det/layers/csrc change.
$(VENV)/.lip_det-installed: setup.py $(wildcard lip_det/layers/csrc/*) tools/install_detectron2.py \
		$(VENV)/.settings $(D2_SOURCE_STAMP)
	@echo "== setting up $(VENV) (torch $(TORCH_VERSION), torchvision $(TORCHVISION_VERSION))"
	[ -x $(VPY) ] || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VPY) -m pip install $(PIP_ARGS) --upgrade setuptools
	$(VPY) -m pip install $(PIP_ARGS) torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(if $(D2_CHANGED),$(VPY) tools/install_detectron2.py $(D2_INSTALL),@echo "detectron2: unchanged")
	$(VPY) -m pip install $(PIP_ARGS) --no-build-isolation -e '.[dev]' $(VENV_EXTRA_PACKAGES)
	@# tidecv (and appdirs, which it imports): the error-analysis test's oracle. Without its
	@# plotting dependencies (opencv, seaborn, pandas: ~100 MB that its error quantification does
	@# not use; the test stands in for them), so the venv stays the one the demo figures were made in.
	$(VPY) -m pip install $(PIP_ARGS) --no-deps tidecv appdirs
	touch $@

# ---- make test-upstream: the upstream source, extracted -------------------------------------------
$(UPSTREAM_DIR)/.extracted: $(DETECTRON2_TARBALL)
	@echo "== extracting $< into $(@D)"
	rm -rf -- "./$(@D)" "./$(@D).tmp"
	mkdir -p "$(@D).tmp"
	tar -xzf "$<" -C "$(@D).tmp"
	@[ -f "$(@D).tmp/detectron2/setup.py" ] || { rm -rf -- "./$(@D).tmp"; \
		echo "error: $< has no detectron2/setup.py (expected: git archive --prefix=detectron2/)" >&2; \
		exit 1; }
	mv -- "$(@D).tmp" "$(@D)"
	touch $@

# ---- an existing environment (PYTHON=...) --------------------------------------------------------
# sys.path[0] (the current directory) is dropped so that ./lip_det does not count as installed.
external-env:
	@$(PY) -c 'import sys; del sys.path[0]; import importlib.util as u; \
		sys.exit(", ".join(m for m in ("torch", "torchvision", "detectron2") \
		if u.find_spec(m) is None) or None)' || { \
		echo "error: PYTHON=$(PY) lacks the modules named above, or is not a Python." >&2; \
		echo "PYTHON= is for an environment that already has torch, torchvision and detectron2." >&2; \
		echo "Install torch and torchvision into it, then detectron2 with" >&2; \
		echo "    $(PY) tools/install_detectron2.py" >&2; \
		echo "or leave out PYTHON= to use the project venv ($(VENV))." >&2; exit 1; }
	$(if $(DETECTRON2_SOURCE),@echo "note: DETECTRON2_SOURCE is not used with PYTHON=; run" \
		"$(PY) tools/install_detectron2.py --source '$(DETECTRON2_SOURCE)'" >&2)
	@where=$$($(PY) -c 'import sys, os; del sys.path[0]; import importlib.util as u; \
		s = u.find_spec("lip_det"); \
		print(os.path.dirname(os.path.dirname(s.origin)) if s and s.origin else "")'); \
	if [ -z "$(REINSTALL)" ] && [ -n "$$where" ] && [ "$$where" -ef . ]; then exit 0; fi; \
	if [ -z "$(REINSTALL)" ] && [ -n "$$where" ]; then \
		echo "error: $(PY) already has lip_det from $$where, not from this checkout." >&2; \
		echo "Installing this checkout ($(CURDIR)) would re-point that environment for" >&2; \
		echo "everyone who uses it: add REINSTALL=1 to do so anyway, or run make in $$where." >&2; \
		exit 1; \
	fi; \
	set -x; $(PY) -m pip install $(PIP_ARGS) --no-deps \
		$$($(PY) -c 'import setuptools' 2>/dev/null && echo --no-build-isolation) -e .

FORCE:
