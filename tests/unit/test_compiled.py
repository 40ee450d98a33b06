"""processors/ runs compiled by mypyc (setup.py) unless installed with ABM_PURE_PYTHON=1:
an install that silently fell back to the interpreter would lose its speed unnoticed."""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

import processors

MODULES = sorted(f"processors.{info.name}" for info in pkgutil.iter_modules(processors.__path__))


@pytest.mark.skipif(os.environ.get("ABM_PURE_PYTHON") == "1", reason="installed without compiling (ABM_PURE_PYTHON=1)")
@pytest.mark.parametrize("name", MODULES)
def test_every_processors_module_is_compiled(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None and module.__file__.endswith(tuple(EXTENSION_SUFFIXES)), module.__file__
