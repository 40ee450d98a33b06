"""Compiles the hot path: processors/ (the per-event domain logic) to C extensions with
mypyc, so the worker spends 5-17 % less CPU per event than interpreted, and
processors/native/ (Rust: routing's fast path, the directory, event rows) to ``abm_native`` (README,
Performance). Set ABM_PURE_PYTHON=1 at install time to build neither (no C compiler or
cargo; or to compare): every event then takes the interpreted path."""

import os

from setuptools import setup

if os.environ.get("ABM_PURE_PYTHON") == "1":
    setup()
else:
    from mypyc.build import mypycify
    from setuptools_rust import Binding, RustExtension

    setup(
        # The build environment has mypy but not our dependencies: their types are Any.
        ext_modules=mypycify(["--ignore-missing-imports", "processors/"], opt_level="3", group_name="abm_processors"),
        rust_extensions=[RustExtension("abm_native", "processors/native/Cargo.toml", binding=Binding.PyO3, py_limited_api=False, debug=False)],
    )
