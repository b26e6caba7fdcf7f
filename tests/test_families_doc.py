"""docs/families.md shows the family x target table `edge-export targets --families` prints, which is
generated from the tables the code enforces: the page cannot drift from what the code does."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "families.md"


def test_the_doc_holds_the_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, table, _ = run_cli(["targets", "--families"], capsys)
    assert code == 0 and "gemma3_text" in table and "modernbert" in table
    assert table.strip() in DOC.read_text(), "regenerate the table in docs/families.md"
