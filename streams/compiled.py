"""Compiled processors/ (setup.py) in a source checkout: Python imports a module's
compiled extension before its source, and its Rust part (processors/native/) is built
only by an install, so an extension older than its sources runs code that is no longer
there, silently. The tests and the command line refuse to start then."""

from __future__ import annotations

from pathlib import Path

import processors

PROCESSORS = Path(processors.__file__ or "").resolve().parent
# A change of the crate's features or dependencies changes what it does as much as its code.
NATIVE_MANIFESTS = ("Cargo.toml", "Cargo.lock")


def stale_compiled_modules(directory: Path | None = None) -> list[str]:
    """The sources in ``directory`` (processors/) changed since they were compiled. Only a source
    checkout (an editable install, next to pyproject.toml) is checked: an installed
    wheel's files carry the times they were unpacked at, in no particular order."""
    directory = directory or PROCESSORS
    root = directory.parent
    if not (root / "pyproject.toml").exists():
        return []
    built = [(source, compiled) for source in sorted(directory.glob("*.py")) for compiled in directory.glob(f"{source.stem}.*.so")]
    native_sources = sorted((directory / "native" / "src").glob("*.rs")) + [p for p in (directory / "native" / name for name in NATIVE_MANIFESTS) if p.exists()]
    built += [(source, native) for native in root.glob("abm_native.*.so") for source in native_sources]
    return [str(source.relative_to(directory)) for source, compiled in built if compiled.stat().st_mtime < source.stat().st_mtime]


def stale_compiled_message(stale: list[str]) -> str:
    return f"processors/ compiled before its sources changed ({', '.join(stale)}): run `make install` (or pip install -e .)"
