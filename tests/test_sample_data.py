"""The committed sample inputs in data/sources/: reproducible from their generator, small, and with the
mix the pipeline is built around (ultra-short bot replies to trim, long ones to keep, planted faults
to quarantine, duplicates). Standard library only, so these checks do not depend on chatmill itself."""

import gzip
import importlib.util
import json
import statistics
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "data" / "sources"
GENERATOR = SOURCES / "generate.py"
PIPPA, ALPACA, SHAREGPT = "pippa-sample.jsonl.gz", "alpaca-sample.json", "sharegpt-fresh.jsonl"
FILES = (PIPPA, ALPACA, SHAREGPT)
MAX_TOTAL_BYTES = 3_000_000
PIPPA_FIELDS = {
    "submission_timestamp": int,
    "categories": list,
    "bot_id": str,
    "bot_name": str,
    "bot_greeting": str,
    "bot_definitions": str,
    "bot_description": str,
    "conversation": list,
}


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chatmill_sample_generator", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sources")
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def pippa_lines() -> list[str]:
    with gzip.open(SOURCES / PIPPA, "rt", encoding="utf-8") as stream:
        return stream.read().splitlines()


def pippa_fault(line: str) -> str | None:
    """The planted-fault kind of a PIPPA line (names as in generate.py), or None if well-formed."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return "truncated_json"
    if isinstance(record, list):
        return "json_array"
    if "conversation" not in record:
        return "missing_conversation"
    if "bot_name" not in record:
        return "missing_bot_name"
    conversation = record["conversation"]
    if not isinstance(conversation, list):
        return "conversation_not_list"
    if not conversation:
        return "empty_conversation"
    for message in conversation:
        if not isinstance(message, dict):
            return "message_not_object"
        if message.get("message") is None:
            return "message_null"
        if not isinstance(message["message"], str):
            return "message_int"
        if not isinstance(message.get("is_human"), bool):
            return "is_human_string"
    if all(not message["message"].strip() for message in conversation):
        return "whitespace_messages"
    if all(message["is_human"] for message in conversation):
        return "all_human"
    return None


def sharegpt_fault(line: str) -> str | None:
    record = json.loads(line)
    for message in record["conversations"]:
        if message["from"] not in ("system", "human", "gpt"):
            return "unknown_from"
        if "value" not in message:
            return "missing_value"
        if not isinstance(message["value"], str):
            return "value_not_string"
    return None


def median_bot_words(texts: list[str]) -> float:
    return statistics.median(len(text.split()) for text in texts)


def duplicate_count(lines: list[str]) -> int:
    return len(lines) - len(set(lines))


# ---------------------------------------------------------------- reproducible and small


def test_regenerating_with_the_default_seed_gives_the_committed_bytes(regenerated: Path) -> None:
    for name in FILES:
        committed, fresh = (SOURCES / name).read_bytes(), (regenerated / name).read_bytes()
        if name.endswith(".gz"):
            assert gzip.decompress(fresh) == gzip.decompress(committed), f"{name}: content differs"
            if fresh != committed and "ng" in zlib.ZLIB_RUNTIME_VERSION:
                continue  # zlib-ng compresses differently from zlib; the content matched above
        assert fresh == committed, f"{name} differs from its regeneration: run data/sources/generate.py"


def test_committed_sample_files_are_small() -> None:
    total = sum((SOURCES / name).stat().st_size for name in FILES)
    assert total <= MAX_TOTAL_BYTES, f"sample data is {total} bytes, over {MAX_TOTAL_BYTES}"


def test_gzip_header_has_no_timestamp_or_name() -> None:
    header = (SOURCES / PIPPA).read_bytes()[:10]
    assert header[3] & 0x08 == 0, "gzip header carries a file name"
    assert header[4:8] == b"\0\0\0\0", "gzip header carries an mtime"


def test_scale_and_seed_change_the_counts_and_content(tmp_path: Path, generator: ModuleType) -> None:
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path), "--scale", "0.1", "--seed", "1"],
        check=True,
        capture_output=True,
    )
    with gzip.open(tmp_path / PIPPA, "rt", encoding="utf-8") as stream:
        lines = stream.read().splitlines()
    faults = [pippa_fault(line) for line in lines]
    assert Counter(fault for fault in faults if fault) == Counter(generator.PIPPA_MALFORMED_KINDS)
    assert len(lines) == 300 + len(generator.PIPPA_MALFORMED_KINDS) + 6  # 2% duplicates
    assert len(json.loads((tmp_path / ALPACA).read_text())) == 50
    assert (tmp_path / SHAREGPT).read_text().count("\n") == 60 + len(generator.SHAREGPT_MALFORMED_KINDS)
    assert (tmp_path / PIPPA).read_bytes() != (SOURCES / PIPPA).read_bytes()


# ---------------------------------------------------------------- PIPPA: the mix the length-trim needs


def test_pippa_planted_faults_match_the_generator_docstring(
    pippa_lines: list[str], generator: ModuleType
) -> None:
    kinds = generator.PIPPA_MALFORMED_KINDS
    assert 8 <= len(kinds) <= 15
    for kind in kinds:
        assert f"- {kind}:" in generator.__doc__, f"{kind} is not documented in generate.py"
    faults = Counter(fault for fault in map(pippa_fault, pippa_lines) if fault)
    assert faults == Counter(kinds)


def test_pippa_well_formed_records_follow_the_format(pippa_lines: list[str]) -> None:
    records = [json.loads(line) for line in pippa_lines if pippa_fault(line) is None]
    assert len(records) >= 2900
    placeholders = 0
    for record in records:
        for field, kind in PIPPA_FIELDS.items():
            assert isinstance(record[field], kind), field
        messages = record["conversation"]
        assert 4 <= len(messages) <= 14
        roles = [message["is_human"] for message in messages]
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), "turns do not alternate"
        assert all(message["message"].strip() for message in messages)
        placeholders += "{{user}}" in json.dumps(messages) or "{{char}}" in json.dumps(messages)
    assert sum(not record["conversation"][0]["is_human"] for record in records) / len(records) > 0.8
    assert placeholders / len(records) > 0.5


def test_pippa_median_bot_reply_lengths_have_the_required_mix(pippa_lines: list[str]) -> None:
    unique = dict.fromkeys(line for line in pippa_lines if pippa_fault(line) is None)
    medians = []
    for line in unique:
        bot_texts = [m["message"] for m in json.loads(line)["conversation"] if not m["is_human"]]
        medians.append(median_bot_words(bot_texts))
    share_short = sum(m <= 5 for m in medians) / len(medians)
    share_long = sum(m > 150 for m in medians) / len(medians)
    assert 0.10 <= share_short <= 0.30, f"median <= 5 words: {share_short:.1%}"
    assert share_long >= 0.10, f"median > 150 words: {share_long:.1%}"
    assert sum(8 < m < 48 for m in medians) / len(medians) >= 0.10  # the default ramp has data on it


def test_pippa_has_exact_duplicate_lines_of_well_formed_records(pippa_lines: list[str]) -> None:
    counts = Counter(pippa_lines)
    repeated = [line for line, count in counts.items() if count > 1]
    assert 0 < duplicate_count(pippa_lines) <= 0.05 * len(pippa_lines)
    assert all(pippa_fault(line) is None for line in repeated)


# ---------------------------------------------------------------- Alpaca and ShareGPT


def test_alpaca_is_a_json_array_of_instruction_records() -> None:
    records: list[Any] = json.loads((SOURCES / ALPACA).read_text(encoding="utf-8"))
    assert isinstance(records, list) and 400 <= len(records) <= 600
    for record in records:
        assert set(record) == {"instruction", "input", "output"}
        assert all(isinstance(value, str) for value in record.values())
        assert 20 <= len(record["output"].split()) <= 200
    assert sum(record["input"] == "" for record in records) / len(records) > 0.5
    assert any("```python" in record["output"] for record in records)
    assert any("\n1. " in record["output"] for record in records)


def test_sharegpt_has_the_planted_faults_and_the_length_mix(generator: ModuleType) -> None:
    lines = (SOURCES / SHAREGPT).read_text(encoding="utf-8").splitlines()
    faults = Counter(fault for fault in map(sharegpt_fault, lines) if fault)
    assert faults == Counter(generator.SHAREGPT_MALFORMED_KINDS)
    medians = []
    for line in lines:
        if sharegpt_fault(line) is None:
            messages = json.loads(line)["conversations"]
            medians.append(median_bot_words([m["value"] for m in messages if m["from"] == "gpt"]))
    assert 500 <= len(medians) <= 700
    assert 0.10 <= sum(m <= 5 for m in medians) / len(medians) <= 0.30
    assert sum(m > 150 for m in medians) / len(medians) >= 0.10
