"""promtool, Prometheus's rule checker, taken from Debian's `prometheus` package without
installing it (no service, no root-owned files): `apt-get download` + `dpkg -x`, cached."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def ensure_promtool(cache_dir: Path) -> Path:
    """The path of a working promtool binary, fetched into ``cache_dir`` on first use."""
    binary = Path(cache_dir).expanduser() / "promtool"
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if _run(["apt-get", "download", "prometheus"], scratch).returncode != 0:
            # a fresh machine may have no package lists yet
            _check(_run(["apt-get", "update", "-qq"], scratch), "apt-get update")
            _check(_run(["apt-get", "download", "prometheus"], scratch), "apt-get download prometheus")
        [package] = Path(scratch).glob("prometheus_*.deb")
        _check(_run(["dpkg", "-x", str(package), "x"], scratch), "dpkg -x")
        staged = binary.with_suffix(".partial")
        shutil.copy2(Path(scratch) / "x" / "usr" / "bin" / "promtool", staged)
        staged.rename(binary)
    return binary


def _run(cmd: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {(result.stdout + result.stderr)[-2000:]}")
