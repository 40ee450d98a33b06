"""Compiles processors/ (the per-event domain logic) to C extensions with mypyc: the
worker spends 5-17 % less CPU per event than interpreted (README, Performance). Set
ABM_PURE_PYTHON=1 at install time to skip it (no C compiler; or to compare)."""

import os

from setuptools import setup

if os.environ.get("ABM_PURE_PYTHON") == "1":
    setup()
else:
    from mypyc.build import mypycify

    # The build environment has mypy but not our dependencies: their types are Any.
    setup(ext_modules=mypycify(["--ignore-missing-imports", "processors/"], opt_level="3", group_name="abm_processors"))
