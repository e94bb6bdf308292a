"""The generated tables of docs/ are what their registries write now (`make docs`), and the example
records of docs/formats.md are what the readers read."""

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from chatmill.docs import regenerate
from chatmill.records import FORMATS


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


def format_examples() -> dict[str, list[str]]:
    """The JSON examples of docs/formats.md, under the `## NAME` heading of their format."""
    examples: dict[str, list[str]] = {}
    for section in (ROOT / "docs/formats.md").read_text().split("\n## ")[1:]:
        name, _, body = section.partition("\n")
        examples[name.strip()] = re.findall(r"```json\n(.*?)\n```", body, re.S)
    return examples


def test_every_record_format_has_an_example_its_reader_reads():
    examples = format_examples()

    assert list(examples) == list(FORMATS)  # a new format in records.FORMATS needs its example here
    for name, texts in examples.items():
        assert len(texts) == 1, name
        record = json.loads(texts[0])
        parsed = FORMATS[name](record)  # the real reader: a RecordError would fail the test
        roles = [turn["role"] for turn in parsed.turns]
        assert "user" in roles and "bot" in roles, name
        if "id" in record:
            assert parsed.meta["origin_id"] == record["id"], name


def test_the_readme_points_at_the_format_examples():
    assert "docs/formats.md" in (ROOT / "README.md").read_text()
