# Everything a fresh machine needs: `make demo` (main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DATA   ?= ../shared/data
TORCH_VERSION ?= 2.13.0
# Threads for the 2-core CI machine; override for bigger boxes.
export OMP_NUM_THREADS ?= 2

.PHONY: install install-ext demo test test-full bench lint clean

$(VENV)/.stamp-base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q torch==$(TORCH_VERSION)
	touch $@

# Rebuilt whenever setup.py or the C++/CUDA sources change.
$(VENV)/.stamp-install: $(VENV)/.stamp-base setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*.h csrc/*/*.h)
	$(PIP) install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.stamp-install

$(VENV)/.stamp-ext: $(VENV)/.stamp-install
	$(PIP) install -q --no-build-isolation torch-scatter torch-sparse
	touch $@

install-ext: $(VENV)/.stamp-ext

demo: install
	$(PY) examples/train_i3mrec.py --root $(DATA)

test: install
	$(PY) -m pytest -q tests

test-full: install-ext
	$(PY) -m pytest -q tests

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

lint: install
	$(PIP) install -q ruff
	$(PY) -m ruff check pyg_mmrec tests examples benchmarks

clean:
	rm -rf build *.egg-info pyg_mmrec/_C*.so
