# The two commands of README.md: `make demo` and `make test`. Each installs first.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
# Test processes: each starts its own Kafka broker. The tests mostly wait (on brokers,
# workers, timeouts), so two share a 2-CPU machine well: 8 instead of 16 minutes.
TEST_PROCESSES ?= 2

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
	$(VENV)/bin/python -m pytest -n $(TEST_PROCESSES) --dist worksteal

bench: $(INSTALLED)
	$(VENV)/bin/python -m tests.bench.bench_throughput

clean:
	rm -rf $(VENV) .abm *.egg-info build abm_processors__mypyc*.so processors/*.so
