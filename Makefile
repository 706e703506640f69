# Two commands a new user needs (see README.md): `make demo` and `make test`.
# Each creates (or reuses) the virtual environment .venv and installs tfadaqat into it.

PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
