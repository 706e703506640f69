# Two commands a new user needs (see README.md): `make demo` and `make test`.
# Each creates (or reuses) the virtual environment .venv and installs tfadaqat into it.

PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp
# Where Debian's dataset-fashion-mnist puts the IDX files (recipes/idx.py looks there too).
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test bench data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,demo,export,recipes]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m recipes.train --config=recipes/configs/digits_adaqat.py --workdir=runs/digits_adaqat

test: $(STAMP)
	$(VENV)/bin/python -m pytest

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
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
