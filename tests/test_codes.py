"""Every code the gateway can emit is documented, and docs/errors.md is current."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.codes import all_codes, render_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_docs_errors_md_is_generated_from_the_code() -> None:
    assert (ROOT / "docs" / "errors.md").read_text() == render_markdown(), (
        "docs/errors.md is stale: run `python -m gateway.codes > docs/errors.md`"
    )


def test_every_code_literal_in_the_source_is_documented() -> None:
    documented = set(all_codes())
    pattern = re.compile(r"""["']((?:parse|io|json|schema|rule|auth|state|recon|tax|signature)\.[a-z0-9_]+)["']""")
    used: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        if "sandbox" in path.parts:
            continue
        used |= set(pattern.findall(path.read_text()))
    missing = sorted(used - documented)
    assert not missing, f"codes used but not in any CODES table: {missing}"
