# Two commands a new user needs (see README.md): `make demo` and `make test`.
# Each creates (or reuses) the virtual environment .venv and installs tfadaqat into it.

PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp
# Where Debian's dataset-fashion-mnist puts the IDX files (recipes/idx.py looks there too).
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast bench data clean hgq2
# HGQ2 (Keras 3), the learned-bits peer of bench/budget.py --dataset=fashion_mnist: its own
# virtual environment, since Keras 3 and tf-keras cannot share a process.
HGQ2_VENV ?= .venv-hgq2
HGQ2_STAMP := $(HGQ2_VENV)/.installed-stamp
HGQ2_REQUIREMENTS := hgq2==0.2.0 tensorflow-cpu==2.21.* numpy

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,demo,export,recipes]"
	$(VENV)/bin/python -m tfadaqat.fused_kernels
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m recipes.train --config=recipes/configs/digits_adaqat.py --workdir=runs/digits_adaqat

# Test processes (pytest-xdist); 0 runs the suite in this one process. A test module stays in one
# process (--dist loadscope), so module fixtures (trained models, worker runs) are built once.
TEST_JOBS ?= 2

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadscope

# The tests not marked slow (see setup.cfg): every unit and golden test, no recipe runs.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadscope -m "not slow"

$(HGQ2_STAMP):
	$(PYTHON) -m venv $(HGQ2_VENV)
	$(HGQ2_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(HGQ2_VENV)/bin/python -m pip install --quiet $(HGQ2_REQUIREMENTS)
	touch $(HGQ2_STAMP)

hgq2: $(HGQ2_STAMP)

bench: $(STAMP)
	$(VENV)/bin/python -m bench.step_time

# Fashion-MNIST for recipes/configs/resnet20_fashion_mnist_*.py. Installs the Debian package
# only as root; otherwise prints the command and fails. No other target needs it: `make test`
# skips the tests of the real files when they are absent.
data:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST is installed in $(FASHION_MNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && apt-get install -y dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing; run: sudo apt-get install dataset-fashion-mnist" \
			"(or set TFADAQAT_FASHION_MNIST_DIR to a folder holding its four IDX files)" >&2; \
		exit 1; \
	fi

clean:
	rm -rf $(VENV) $(HGQ2_VENV) build *.egg-info .pytest_cache .hypothesis
