# The two commands of README.md: `make demo` and `make test`. Each installs first.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: install demo test bench clean

# Re-installs when pyproject.toml changes, and when processors/ does: the package is
# editable, but processors/ runs compiled (setup.py).
$(INSTALLED): pyproject.toml setup.py $(wildcard processors/*.py)
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "ABM Pulse needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/abm demo

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest

bench: $(INSTALLED)
	$(VENV)/bin/python -m tests.bench.bench_throughput

clean:
	rm -rf $(VENV) .abm *.egg-info build abm_processors__mypyc*.so processors/*.so
