# The two commands of the README. Both create ./.venv and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip

.PHONY: install install-test demo test test-slow

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first and pinned: pip takes these builds from the local disk where they are cached.
install: $(VENV)/bin/python
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e ".[train]"

install-test: install
	$(PIP) install -e ".[train,test]"

# Offline demo: trains, tests, exports and logs PaDiM on scikit-learn's bundled digits.
demo: install
	$(VENV)/bin/quadra-ad experiment=generic/digits/anomaly/padim

test: install-test
	$(VENV)/bin/python -m pytest

# The slow tests (heavy models at their smallest sizes, sweeps, wheel build): CI runs them too.
test-slow: install-test
	$(VENV)/bin/python -m pytest -m slow
