"""README.md documents every setting (and nothing that is not one)."""

from __future__ import annotations

import re
from pathlib import Path

from streams.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias.choices[0] if alias is not None else f"ABM_{field.upper()}"  # type: ignore[union-attr]


def test_configuration_table_lists_exactly_the_settings():
    documented = re.findall(r"^\| `([A-Z_]+)` \|", README.read_text(), flags=re.MULTILINE)
    assert sorted(documented) == sorted(env_name(field) for field in Settings.model_fields)


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in README.read_text()
    assert re.search(r"^exec make test$", ci, flags=re.MULTILINE)
