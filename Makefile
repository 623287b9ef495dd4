# The two commands of the README. Both create ./.venv and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip -q
# pip runs once: each install leaves a stamp in the venv, remade only when pyproject.toml or this
# file changes (make compares their times), so a second `make demo` or `make test` starts at once.
INSTALLED_TRAIN = $(VENV)/.installed-train
INSTALLED_TEST = $(VENV)/.installed-test
# Where `make docs` builds the site (git-ignored).
SITE_DIR ?= site

.PHONY: install install-test demo test test-slow docs lint

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

install: $(INSTALLED_TRAIN)

install-test: $(INSTALLED_TEST)

# torch first and pinned: pip takes these builds from the local disk where they are cached.
$(INSTALLED_TRAIN): pyproject.toml Makefile | $(VENV)/bin/python
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e ".[train]"
	touch $@

$(INSTALLED_TEST): $(INSTALLED_TRAIN) pyproject.toml Makefile
	$(PIP) install -e ".[train,test]"
	touch $@

# Offline demo: trains, tests, exports and logs PaDiM on scikit-learn's bundled digits.
demo: install
	$(VENV)/bin/quadra-ad experiment=generic/digits/anomaly/padim

test: install-test
	$(VENV)/bin/python -m pytest

# The slow tests (heavy models at their smallest sizes, sweeps, wheel build): CI runs them too.
test-slow: install-test
	$(VENV)/bin/python -m pytest -m slow

# The documentation site, built as CI builds it: a broken link or a missing page fails. The theme's
# end-of-life notice (NO_MKDOCS_2_WARNING) is not about our pages.
docs: install-test
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(SITE_DIR)

# The linter, with the settings in pyproject.toml ([tool.ruff]).
lint: install-test
	$(VENV)/bin/ruff check .
