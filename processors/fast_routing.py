"""The hot path's native code (``abm_native``, built from processors/native/ by setup.py:
the routing stage's fast path, the account directory, event rows), or None where it is
not built (ABM_PURE_PYTHON=1): the same events then take the interpreted path, which
derives exactly the same (tests/unit/test_fast_path.py, test_identity.py, test_rows.py)."""

from __future__ import annotations

from typing import Any


def _load() -> Any:
    try:
        import abm_native
    except ImportError:
        return None
    return abm_native


native: Any = _load()
