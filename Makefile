# The two commands of README.md: `make demo` and `make test`. Each installs first.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
# rustup installs cargo here, and a non-login shell may not have it on its PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)
# Test processes: each starts its own Kafka broker. The tests mostly wait (on brokers,
# workers, timeouts), so two share a 2-CPU machine well: 8 instead of 16 minutes.
TEST_PROCESSES ?= 2

.PHONY: install demo test bench clean

# Re-installs when pyproject.toml changes, and when processors/ (its Python or its Rust)
# does: the package is editable, but both run compiled (setup.py).
$(INSTALLED): pyproject.toml setup.py $(wildcard processors/*.py) processors/native/Cargo.toml processors/native/Cargo.lock $(wildcard processors/native/src/*.rs)
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "ABM Pulse needs Python >= 3.11")'
	@[ "$$ABM_PURE_PYTHON" = 1 ] || command -v cargo >/dev/null || { echo "ABM Pulse builds processors/native/ with Rust's cargo: install it (https://rustup.rs), or set ABM_PURE_PYTHON=1"; exit 1; }
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
	rm -rf $(VENV) .abm *.egg-info build abm_processors__mypyc*.so processors/*.so abm_native*.so processors/native/target
