# Build, test and run the chess-bot pod appliance. `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
STOCKFISH ?= /usr/games/stockfish
# `make train`: a short CPU run; the trainer's own defaults are the seed's (40 epochs, lr 2e-4).
TRAIN_EPOCHS ?= 3
TRAIN_LR ?= 2e-3
TRAIN_BATCH_SIZE ?= 16
PYTEST_ARGS ?=

.PHONY: help install system-deps test test-unit bench lint train gpu-check clean \
	base-image image push up down smoke hadolint check-cuda-image

help:
	@echo "make up          build the image if needed and run a local pod (SSH, Jupyter, API)"
	@echo "make down        stop the local pod, keep its /workspace volume"
	@echo "make image       build the pod image (Docker, else podman), tags: git SHA and latest;"
	@echo "                 pulls BASE_IMAGE, else (or OFFLINE=1) the offline path; TORCH_VARIANT=cuda"
	@echo "make push        push both tags to IMAGE_REPO (DRY_RUN=1 prints what it would push)"
	@echo "make smoke       the image's training preset on a small dataset, one timing log"
	@echo "make base-image  debootstrap the offline path's bookworm base and import it (cached)"
	@echo "make check-cuda-image  build the CUDA variant and check it without a GPU (gigabytes)"
	@echo "make install     create .venv with the project (editable) and dev tools"
	@echo "make train       train on data/sample and print the evaluation table"
	@echo "make test        install what the tests need, then run every tier"
	@echo "make bench       run the benchmarks (JSON lines)"
	@echo "make lint        ruff and mypy"
	@echo "make gpu-check   GPU training/inference check (needs a CUDA GPU)"

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Stockfish generates games in the tests; the pod-runtime tests run sshd, ssh, git and setfacl
# (runner may need to reach a Python under /root). Installed from Debian when running as root;
# policy-rc.d 101 keeps the package from starting a machine-wide sshd.
RUNTIME_TOOLS := /usr/sbin/sshd:openssh-server /usr/bin/ssh:openssh-client \
  /usr/bin/ssh-keygen:openssh-client /usr/bin/git:git /usr/bin/setfacl:acl
system-deps:
	@if [ ! -x $(STOCKFISH) ] && ! command -v stockfish >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing stockfish (apt)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stockfish >/dev/null; \
	  else echo "stockfish not found: install it (apt-get install stockfish)"; \
	    [ "$$CI" != true ] || exit 1; fi; \
	fi
	@missing=""; for t in $(RUNTIME_TOOLS); do [ -x "$${t%%:*}" ] || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (apt)"; policy=; \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then policy=1; \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    rc=$$?; [ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	  else echo "not found:$$missing: install them (apt-get install$$missing)"; \
	    [ "$$CI" != true ] || exit 1; fi; \
	fi

# The container tiers: an engine (podman+runc unless Docker runs), debootstrap for the offline
# base image, a loopback registry for the push test, and an ssh client. Root installs them via
# apt; otherwise a missing one fails under CI=true and is only reported elsewhere.
CONTAINER_DEPS := podman:podman runc:runc debootstrap:debootstrap \
	docker-registry:docker-registry ssh:openssh-client ssh-keygen:openssh-client
system-deps: system-deps-container
.PHONY: system-deps-container
system-deps-container:
	@missing=""; for pair in $(CONTAINER_DEPS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (apt)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing for the container tests:$$missing (apt-get install$$missing)"; \
	    [ "$$CI" != true ] || exit 1; fi; \
	fi

test: install system-deps
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# --- the image and the local pod (logic in host_tools/image.py and host_tools/localup.py) ---
# Their variables (IMAGE_REPO, TORCH_VARIANT, SMOKE_*, ...) and defaults are declared once, in
# host_tools/settings.py; `make image IMAGE_REPO=...` passes a value on, as make exports
# command-line variables to the recipes.
DRY_RUN ?=

base-image: install
	$(PY) -m host_tools.image base-image

image: install
	$(PY) -m host_tools.image build

push: install
	$(PY) -m host_tools.image push $(if $(filter 1 true yes,$(DRY_RUN)),--dry-run)

# The CUDA variant and its checks on a machine without a GPU (host_tools/cuda_check.py); the
# wheels (gigabytes) are downloaded once into CUDA_WHEELS, outside the checkout.
CUDA_WHEELS ?= $(HOME)/.cache/chessbot/cuda-wheels
check-cuda-image: install
	$(PY) -m host_tools.cuda_check --wheels "$(CUDA_WHEELS)"

hadolint: install
	$(VENV)/bin/hadolint image/Dockerfile

up: install
	$(PY) -m host_tools.localup up

down: install
	$(PY) -m host_tools.localup down

smoke: install
	$(PY) -m host_tools.localup smoke

test-unit: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/unit

# Every benchmarks/bench*.py; BENCH=name runs one (e.g. BENCH=inference).
BENCH ?= *
bench: install system-deps
	@set -e; for b in benchmarks/bench$(if $(filter *,$(BENCH)),*,_$(BENCH)).py; do \
	  echo "# $$b" >&2; $(PY) $$b; done

lint: install
	$(VENV)/bin/ruff check appliance host_tools tests benchmarks
	$(VENV)/bin/mypy appliance host_tools

train: install
	TRAIN_DATASET_DIR=data/sample TRAIN_EPOCHS=$(TRAIN_EPOCHS) TRAIN_LR=$(TRAIN_LR) \
	  TRAIN_BATCH_SIZE=$(TRAIN_BATCH_SIZE) \
	  TRAIN_OUTPUT_DIR=$${TRAIN_OUTPUT_DIR:-artifacts/train/sample} \
	  $(PY) -m appliance.training.preset

gpu-check: install
	$(PY) -m appliance.training.gpu_check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
