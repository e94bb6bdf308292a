"""The generated tables of docs/ are what their registries write now (`make docs`)."""

import subprocess
import sys

import pytest
from conftest import ROOT

from chatmill.docs import regenerate


def test_the_committed_docs_tables_are_current():
    result = subprocess.run([sys.executable, "-m", "chatmill.docs", "--check"], cwd=ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_regenerate_replaces_only_the_named_block():
    text = "intro\n<!-- generated: t (note) -->\nold\n<!-- end: t -->\noutro\n"
    assert regenerate(text, {"t": lambda: "new\n"}, "x.md") == (
        "intro\n<!-- generated: t (note) -->\nnew\n<!-- end: t -->\noutro\n"
    )
    with pytest.raises(SystemExit, match="x.md has no <!-- generated: u -->"):
        regenerate(text, {"u": lambda: ""}, "x.md")
