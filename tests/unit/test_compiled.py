"""processors/ runs compiled by mypyc (setup.py) unless installed with ABM_PURE_PYTHON=1:
an install that silently fell back to the interpreter would lose its speed unnoticed; and
nothing runs on compiled modules older than their sources."""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from click.testing import CliRunner

import processors
from processors import fast_routing
from streams import compiled
from streams.cli import main
from streams.compiled import stale_compiled_modules
from tests.hot_path_digest import digest_of_a_run

MODULES = sorted(f"processors.{info.name}" for info in pkgutil.iter_modules(processors.__path__))


@pytest.mark.skipif(os.environ.get("ABM_PURE_PYTHON") == "1", reason="installed without compiling (ABM_PURE_PYTHON=1)")
@pytest.mark.parametrize("name", MODULES)
def test_every_processors_module_is_compiled(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None and module.__file__.endswith(tuple(EXTENSION_SUFFIXES)), module.__file__


@pytest.mark.skipif(os.environ.get("ABM_PURE_PYTHON") == "1", reason="installed without compiling (ABM_PURE_PYTHON=1)")
def test_the_native_fast_path_is_built() -> None:
    """An install without cargo would route every event the interpreted way, unnoticed."""
    assert fast_routing.native is not None


def _checkout(root: Path, *, compiled_first: bool, with_pyproject: bool = True) -> Path:
    """processors/ of a checkout whose module was compiled before (or after) its source was written."""
    directory = root / "processors"
    directory.mkdir()
    if with_pyproject:
        (root / "pyproject.toml").write_text("")
    source, compiled = directory / "scoring.py", directory / f"scoring{EXTENSION_SUFFIXES[0]}"
    source.write_text("")
    compiled.write_bytes(b"")
    earlier, later = (compiled, source) if compiled_first else (source, compiled)
    os.utime(earlier, (1_000_000, 1_000_000))
    os.utime(later, (2_000_000, 2_000_000))
    return directory


def test_a_module_compiled_before_its_source_changed_is_stale(tmp_path: Path) -> None:
    assert stale_compiled_modules(_checkout(tmp_path, compiled_first=True)) == ["scoring.py"]


def test_a_module_compiled_after_its_source_is_current(tmp_path: Path) -> None:
    assert stale_compiled_modules(_checkout(tmp_path, compiled_first=False)) == []


def test_an_installed_package_is_not_checked(tmp_path: Path) -> None:
    assert stale_compiled_modules(_checkout(tmp_path, compiled_first=True, with_pyproject=False)) == []


def test_a_native_extension_built_before_its_source_or_manifest_changed_is_stale(tmp_path: Path) -> None:
    directory = _checkout(tmp_path, compiled_first=False)
    (directory / "native" / "src").mkdir(parents=True)
    source, built = directory / "native" / "src" / "lib.rs", tmp_path / f"abm_native{EXTENSION_SUFFIXES[0]}"
    source.write_text("")
    built.write_bytes(b"")
    os.utime(built, (1_000_000, 1_000_000))
    os.utime(source, (2_000_000, 2_000_000))
    assert stale_compiled_modules(directory) == ["native/src/lib.rs"]
    os.utime(built, (3_000_000, 3_000_000))
    assert stale_compiled_modules(directory) == []
    manifest = directory / "native" / "Cargo.toml"  # its features changed, say
    manifest.write_text("")
    os.utime(manifest, (4_000_000, 4_000_000))
    assert stale_compiled_modules(directory) == ["native/Cargo.toml"]


def test_the_command_line_refuses_stale_compiled_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "PROCESSORS", _checkout(tmp_path, compiled_first=True))
    result = CliRunner().invoke(main, ["kafka", "--help"])
    assert result.exit_code == 1
    assert "compiled before its sources changed (scoring.py)" in result.output
    (tmp_path / "current").mkdir()
    monkeypatch.setattr(compiled, "PROCESSORS", _checkout(tmp_path / "current", compiled_first=False))
    assert CliRunner().invoke(main, ["kafka", "--help"]).exit_code == 0


def test_interpreted_and_compiled_processors_derive_the_same_bytes() -> None:
    """mypyc once miscompiled a generator (the tests caught it by luck); this compares
    everything processors/ derives from one stream: routing, folding, held segments, states."""
    default, pure = digest_of_a_run(), digest_of_a_run("--pure")
    assert str(pure.pop("scoring_module")).endswith("/processors/scoring.py")
    compiled_module = str(default.pop("scoring_module"))
    if os.environ.get("ABM_PURE_PYTHON") != "1":
        assert compiled_module.endswith(tuple(EXTENSION_SUFFIXES)), compiled_module
    assert default == pure
    # the stream exercises every part it is meant to
    assert default["rejected"] == 6 and default["unresolved"] > 0 and default["duplicates"] > 0
    assert default["transitions"] > 0 and default["segments"] > 0
