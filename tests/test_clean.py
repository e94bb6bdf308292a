"""The clean stage: normalisation, placeholders, drops, exact dedup, quarantine and the whole stage run.
PII scrubbing, the quality filters and near-dup have their own tests: test_pii, test_filters, test_neardup."""

import copy
import datetime
import gzip
import io
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DEFAULT_PARAMS, run_stage, write_workspace

import chatmill.clean as clean
from chatmill.containers import RawRecord
from chatmill.errors import ChatmillError
from chatmill.filters import ExactDuplicate, NoBotTurn
from chatmill.records import ParsedRecord, RecordError
from chatmill.schema import USER_NAME
from chatmill.stats import StageStats


def default_clean_params(**changes) -> dict:
    """The repository's `clean` section (PII, filters, near-dup and all), with the test's changes."""
    return copy.deepcopy(DEFAULT_PARAMS["clean"]) | changes


def reconciles(stats: StageStats) -> bool:
    return stats.records_in == stats.records_out + sum(stats.dropped.values()) + stats.quarantined


def sharegpt(*texts: str, **fields) -> dict:
    """A sharegpt record whose turns alternate human, gpt, human, ..."""
    roles = ("human", "gpt")
    return {"conversations": [{"from": roles[i % 2], "value": t} for i, t in enumerate(texts)], **fields}


def line(record) -> str:
    return json.dumps(record, ensure_ascii=False)


def conversation_of(record: dict, source: str = "logs", format_name: str = "sharegpt"):
    return clean.to_conversation(RawRecord("x.jsonl:1", value=record), source, format_name)


# ---------------------------------------------------------------- normalize_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("caf\u0065\u0301", "caf\u00e9"),  # NFD -> NFC
        ("e\u200b\u0301", "\u00e9"),  # NFC after the invisible character between them is gone
        ("one\r\ntwo\rthree\u2028four\u2029five", "one\ntwo\nthree\nfour\nfive"),
        # no-break and typographic spaces become spaces one for one; the CJK full-width space stays
        ("a\u00a0\u00a0b\u2003c\u202fd\u3000e", "a  b c d\u3000e"),
        ("zero\u200bwidth\u2060\ufeffers", "zerowidthers"),
        # ZWNJ and ZWJ are kept: emoji sequences and Persian or Indic text need them
        ("\U0001f469\u200d\U0001f4bb", "\U0001f469\u200d\U0001f4bb"),
        ("\x00bell\x07 and\x1b escape\x7f", "bell and escape"),
        # what carries no meaning: whitespace at line ends, blank lines at the start and the end
        ("line  \nnext\t\nlast \u00a0", "line\nnext\nlast"),
        ("\n \n\t\nHello.\n\n \n", "Hello."),
        ("\n\n  \u200b  \n", ""),
        # a stray space before a message goes; the first line of an indented block keeps its indentation
        (" Hello there.", "Hello there."),
        ("\n  Hello.\nHow are you?", "Hello.\nHow are you?"),
        ("  - first\n  - second", "  - first\n  - second"),
        ("    x = 1\n    y = 2", "    x = 1\n    y = 2"),
        # runs of spaces, tabs and blank lines inside the text are layout: they stay
        ("a  \t b", "a  \t b"),
        ("a\t\tb", "a\t\tb"),
        ("a\n\n\nb", "a\n\n\nb"),
        ("a\r\n\r\n\r\n\r\nb", "a\n\n\n\nb"),
        ("a\n \n\t\n\u00a0\nb", "a\n\n\n\nb"),  # lines of only whitespace are blank lines
        (
            "1.  First\n    - nested\n\n| a   | b |\n|-----|---|",
            "1.  First\n    - nested\n\n| a   | b |\n|-----|---|",
        ),
    ],
)
def test_normalize_text(text, expected):
    assert clean.normalize_text(text) == expected


def test_a_fenced_code_block_is_left_as_it_is_but_for_line_breaks_invisibles_and_nfc():
    code = "def f(x):  \n\treturn x  \n\n\n\u00a0# no-break\n"
    text = f"Like this:  \n```python\n{code}```\nDone.  \n~~~\n  ``` not a fence end\n   \n~~~~\nEnd."
    assert clean.normalize_text(text) == (
        f"Like this:\n```python\n{code}```\nDone.\n~~~\n  ``` not a fence end\n   \n~~~~\nEnd."
    )
    assert clean.normalize_text("```\r\n  a\u200b  \r\n  e\u0301  \r\n```") == "```\n  a  \n  \u00e9  \n```"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a fence opened and never closed runs to the end of the text, as in CommonMark
        ("Code:\n```\n  x = 1  \n\n  y  ", "Code:\n```\n  x = 1  \n\n  y"),
        # "```x```" is inline code, not a fence: the line after it is prose
        ("```x```  \ntext  ", "```x```\ntext"),
        # a closing fence needs the opening character, at least as many of it, and nothing after it
        ("````\n```\n  a  \n````\nb  ", "````\n```\n  a  \n````\nb"),
        ("```\n  a  \n``` python\n  b  \n```\nc  ", "```\n  a  \n``` python\n  b  \n```\nc"),
        # an indented fence (inside a list item) is a fence too
        (
            "1. Run:\n   ```sh\n   make   \n   ```\n2. Done.  ",
            "1. Run:\n   ```sh\n   make   \n   ```\n2. Done.",
        ),
    ],
)
def test_code_fences_are_found_as_markdown_finds_them(text, expected):
    assert clean.normalize_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "e\u200b\u0301 x",
        " a \u00a0\n\n\n\u200b\n b ",
        "\r\n\u0301start",
        "tab\t\u200b\tend\r",
        " first\n```\n  code\n```",
        "\u00a0```\n a \n```\n x",
        "\n \u2028 ```py\n\u00a0 y  \n",
    ],
)
def test_normalize_text_is_idempotent(text):
    once = clean.normalize_text(text)
    assert clean.normalize_text(once) == once


# ---------------------------------------------------------------- placeholders


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{char}} waves at {{user}}.", "Aqua waves at You."),
        ("{{CHAR}} and {{Char}}, {{USER}} and {{uSeR}}", "Aqua and Aqua, You and You"),
        ("<BOT> greets <user>", "Aqua greets You"),
        ("{{ char }} {char} {{charlie}}", "{{ char }} {char} {{charlie}}"),
    ],
)
def test_substitute_placeholders(text, expected):
    assert clean.substitute_placeholders(text, "Aqua") == expected


# ---------------------------------------------------------------- normalize_record and to_conversation


def test_normalize_record_substitutes_normalises_and_removes_empty_turns():
    parsed = ParsedRecord(
        bot_name="  Aqua\u200b ",
        persona="{{char}} is a  goddess.",
        scenario="{{user}} meets {{char}}.\r\n",
        turns=[
            {"role": "bot", "name": "whatever", "text": "Hi,\u00a0{{user}}!"},
            {"role": "user", "name": USER_NAME, "text": " \u200b\t"},
            {"role": "user", "name": USER_NAME, "text": "Hello\r\n\r\n\r\nthere"},
            {"role": "bot", "name": "Aqua", "text": ""},
        ],
        meta={"categories": ["Anime"]},
    )
    result = clean.normalize_record(parsed)
    assert result.bot_name == "Aqua"
    assert (result.persona, result.scenario) == ("Aqua is a  goddess.", "You meets Aqua.")
    assert result.turns == [
        {"role": "bot", "name": "Aqua", "text": "Hi, You!"},
        {"role": "user", "name": USER_NAME, "text": "Hello\n\n\nthere"},
    ]
    assert result.meta == {"categories": ["Anime"]}


def test_empty_bot_name_becomes_bot():
    parsed = ParsedRecord(" \u200b", "", "", [{"role": "bot", "name": "", "text": "{{char}} here"}], {})
    result = clean.normalize_record(parsed)
    assert result.bot_name == "Bot"
    assert result.turns == [{"role": "bot", "name": "Bot", "text": "Bot here"}]


def test_to_conversation_builds_the_canonical_row():
    conversation = conversation_of(sharegpt(" Hi  there ", "Hello!", id=7), source="fresh")
    assert conversation["source"] == "fresh"
    assert conversation["bot_name"] == "Assistant"
    assert [t["text"] for t in conversation["turns"]] == ["Hi  there", "Hello!"]
    assert json.loads(conversation["meta"]) == {"origin_id": 7}
    assert len(conversation["id"]) == 24


def test_to_conversation_raises_the_container_error_as_the_reason():
    with pytest.raises(RecordError, match="^invalid json: boom$"):
        clean.to_conversation(RawRecord("x.jsonl:3", raw="{", error="invalid json: boom"), "logs", "pippa")


def test_to_conversation_passes_parser_errors_on():
    with pytest.raises(RecordError, match="missing field 'conversations'"):
        conversation_of({"messages": []})


def test_lone_surrogate_is_a_record_error_not_a_crash_later():
    record = json.loads(
        '{"conversations": [{"from": "human", "value": "hi \\ud83d"}, {"from": "gpt", "value": "hello"}]}'
    )
    with pytest.raises(RecordError, match="invalid unicode"):
        conversation_of(record)


# ---------------------------------------------------------------- drop_reason


def test_conversation_without_a_bot_turn_is_dropped():
    only_user = conversation_of(sharegpt("Hello?"))
    empty_reply = conversation_of(sharegpt("Hello?", " \u200b "))
    filters = [NoBotTurn(), ExactDuplicate()]
    assert clean.drop_reason(only_user, filters) == "no_bot_turn"
    assert clean.drop_reason(empty_reply, filters) == "no_bot_turn"


def test_duplicate_after_normalisation_is_dropped():
    first = conversation_of(sharegpt("Hi there", "Hello!"))
    again = conversation_of(sharegpt("  Hi there \t\r\n", "Hello!\u200b"), source="other")
    assert first["id"] == again["id"]
    filters = [NoBotTurn(), ExactDuplicate()]
    assert clean.drop_reason(first, filters) is None
    assert clean.drop_reason(again, filters) == "duplicate"


def test_a_copy_differing_only_in_spacing_inside_lines_is_a_near_duplicate():
    """normalize_text keeps runs of spaces (they may be layout); near-dup reads words, so a copy is
    still found."""
    text = "The lighthouse keeper  counted the waves again, as he did every night."
    first = conversation_of(sharegpt("Tell me about the keeper.", text))
    spaced = conversation_of(sharegpt("Tell me about the keeper.", text.replace(" ", "  ")))
    assert first["id"] != spaced["id"]
    _, filters = clean.build_filters(default_clean_params())
    assert clean.drop_reason(first, filters) is None
    assert clean.drop_reason(spaced, filters) == "near_duplicate"


def test_different_conversations_are_not_duplicates():
    first = conversation_of(sharegpt("Hi there", "Hello!"))
    other = conversation_of(sharegpt("Hi there", "Hello!!"))
    filters = [ExactDuplicate()]
    assert clean.drop_reason(first, filters) is None
    assert clean.drop_reason(other, filters) is None


def test_the_first_filter_that_drops_names_the_reason():
    only_user = conversation_of(sharegpt("Hello?"))
    with_reply = conversation_of(sharegpt("Hello?", "Hi!"))
    seen = ExactDuplicate()
    assert seen.keep(only_user) and seen.keep(with_reply)  # both seen once: copies of them are duplicates
    assert not NoBotTurn().keep(only_user) and not seen.keep(only_user)  # each filter alone drops it
    # Both filters would drop it: the reason is the first one's, in either order.
    assert clean.drop_reason(only_user, [NoBotTurn(), seen]) == "no_bot_turn"
    assert clean.drop_reason(only_user, [seen, NoBotTurn()]) == "duplicate"
    # The first keeps it, the second drops it: the reason is the second one's.
    assert clean.drop_reason(with_reply, [NoBotTurn(), seen]) == "duplicate"
    # A filter after the one that drops never sees the conversation: a fresh index still keeps it.
    fresh = ExactDuplicate()
    assert clean.drop_reason(only_user, [NoBotTurn(), fresh]) == "no_bot_turn"
    assert fresh.seen == set()


# ---------------------------------------------------------------- scrub_conversation and build_filters


def test_scrub_conversation_scrubs_every_text_field_and_meta_and_rehashes_the_id():
    record = sharegpt("Mail me: ann@example.com", "Call (555) 123-4567!", id="ann@example.com")
    record |= {"persona": "Owner: 10.0.0.7", "scenario": "Key sk-abcdefghijklmnopqrstuvwx1234"}
    conversation = conversation_of(record)
    scrubber, _ = clean.build_filters(default_clean_params())
    scrubbed = clean.scrub_conversation(conversation, scrubber)
    assert [t["text"] for t in scrubbed["turns"]] == ["Mail me: <EMAIL>", "Call <PHONE>!"]
    assert (scrubbed["persona"], scrubbed["scenario"]) == ("Owner: <IP_ADDRESS>", "Key <API_KEY>")
    assert json.loads(scrubbed["meta"]) == {"origin_id": "<EMAIL>"}
    # The id is that of the same conversation arriving already scrubbed.
    already_scrubbed = sharegpt("Mail me: <EMAIL>", "Call <PHONE>!", id="<EMAIL>")
    already_scrubbed |= {"persona": "Owner: <IP_ADDRESS>", "scenario": "Key <API_KEY>"}
    assert scrubbed == conversation_of(already_scrubbed)
    assert scrubbed["id"] != conversation["id"]
    assert scrubber.counts == {
        "api_key": 1,
        "card_number": 0,
        "credential_url": 0,
        "email": 2,
        "ip_address": 1,
        "phone": 1,
    }


def test_scrub_conversation_without_pii_returns_it_unchanged():
    conversation = conversation_of(sharegpt("It's 10:30 and the sword costs $19.99.", "Roll 2d6+3!"))
    scrubber, _ = clean.build_filters(default_clean_params())
    assert clean.scrub_conversation(conversation, scrubber) is conversation


def test_build_filters_follows_params_and_orders_the_filters():
    scrubber, filters = clean.build_filters(default_clean_params())
    assert scrubber is not None
    assert [f.name for f in filters] == [
        "no_bot_turn",
        "message_too_long",
        "zalgo",
        "looping_bot",
        "duplicate",
        "near_duplicate",
    ]
    params = default_clean_params(pii={"enabled": False, "types": []})
    params["filters"] = params["filters"] | {"zalgo": {"enabled": False, "max_combining_marks": 4}}
    params["near_dup"] = params["near_dup"] | {"enabled": False}
    scrubber, filters = clean.build_filters(params)
    assert scrubber is None
    assert [f.name for f in filters] == ["no_bot_turn", "message_too_long", "looping_bot", "duplicate"]


# ---------------------------------------------------------------- source_formats


def fresh_logs(**changes) -> dict:
    """A sources section of one source, with the test's changes to it."""
    return {
        "fresh_logs": {"uri": "data/sources/fresh.jsonl", "format": "sharegpt", "trim": True, "weight": 1.0}
        | changes
    }


def test_source_formats_maps_each_source_to_its_format_by_name():
    sources = fresh_logs() | {
        "community_logs": {"uri": "data/sources/pippa.jsonl.gz", "format": "pippa", "trim": True, "weight": 1}
    }
    formats = clean.source_formats(sources)
    assert list(formats.items()) == [("community_logs", "pippa"), ("fresh_logs", "sharegpt")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"format": "xml"},
            "params.yaml: sources.fresh_logs.format is 'xml'; known formats: pippa, sharegpt, openai, alpaca",
        ),
        ({"format": 7}, "params.yaml: sources.fresh_logs.format must be str, got 7"),
    ],
)
def test_source_formats_names_the_bad_key_and_the_known_formats(change, message):
    with pytest.raises(ChatmillError) as error:
        clean.source_formats(fresh_logs(**change))
    assert str(error.value) == message


def test_source_formats_missing_format():
    sources = fresh_logs()
    del sources["fresh_logs"]["format"]
    with pytest.raises(ChatmillError, match=r"^params\.yaml: sources\.fresh_logs\.format is missing$"):
        clean.source_formats(sources)


def test_an_unknown_format_stops_the_stage_before_it_reads_anything(tmp_path, monkeypatch, capsys):
    """No data/raw here: a stage that read before checking would fail on the missing manifest instead."""
    monkeypatch.chdir(tmp_path)
    write_workspace(tmp_path, {"sources": fresh_logs(format="xml")}, replace=True)
    with pytest.raises(SystemExit) as exit_info:
        run_stage("clean")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: params.yaml: sources.fresh_logs.format is 'xml'; "
        "known formats: pippa, sharegpt, openai, alpaca\n"
    )
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- quarantine_entry


def test_quarantine_entry_keeps_the_raw_text():
    raw = RawRecord("x.jsonl:3", raw='{"n":', error="invalid json: ...")
    assert clean.quarantine_entry(raw, "logs", "invalid json: ...") == {
        "source": "logs",
        "location": "x.jsonl:3",
        "reason": "invalid json: ...",
        "raw": '{"n":',
    }


def test_quarantine_entry_of_a_parquet_row_with_a_timestamp():
    raw = RawRecord("x.parquet:#0", value={"instruction": "Do it.", "when": datetime.datetime(2023, 3, 3)})
    entry = clean.quarantine_entry(raw, "logs", "missing field 'output'")
    assert json.loads(entry["raw"]) == {"instruction": "Do it.", "when": "2023-03-03 00:00:00"}


# ---------------------------------------------------------------- clean_sources


def write_raw(raw_dir: Path, files: dict[str, tuple[str, bytes]]) -> dict:
    """files: source name -> (file name, content); returns the manifest."""
    manifest = {}
    for name, (file_name, content) in files.items():
        (raw_dir / name).mkdir(parents=True)
        (raw_dir / name / file_name).write_bytes(content)
        manifest[name] = {"file": f"{name}/{file_name}"}
    return manifest


def run_clean_sources(tmp_path: Path, formats: dict, files: dict) -> tuple[list, list, StageStats]:
    manifest = write_raw(tmp_path / "raw", files)
    quarantine, stats = io.StringIO(), StageStats()
    scrubber, filters = clean.build_filters(default_clean_params())
    kept = list(
        clean.clean_sources(formats, manifest, tmp_path / "raw", quarantine, stats, scrubber, filters)
    )
    return kept, [json.loads(q) for q in quarantine.getvalue().splitlines()], stats


def test_first_copy_of_a_duplicate_is_kept_by_source_name_then_file_order(tmp_path):
    one = line(sharegpt("Hi", "Hello!", id="first"))
    one_spaced = line(sharegpt("Hi ", "  Hello!", id="second"))
    one_elsewhere = line(sharegpt("Hi", "Hello!\r\n", id="elsewhere"))
    two = line(sharegpt("Bye", "See you."))
    formats = {"b_logs": "sharegpt", "a_logs": "sharegpt"}
    files = {
        "b_logs": ("b.jsonl", f"{one_elsewhere}\n{two}\n".encode()),
        "a_logs": ("a.jsonl", f"{one}\n{one_spaced}\n".encode()),
    }
    kept, quarantined, stats = run_clean_sources(tmp_path, formats, files)
    assert [(c["source"], json.loads(c["meta"])) for c in kept] == [
        ("a_logs", {"origin_id": "first"}),
        ("b_logs", {}),
    ]
    assert quarantined == []
    assert (stats.records_in, stats.records_out, dict(stats.dropped)) == (4, 2, {"duplicate": 2})
    assert stats.extra["sources"] == {
        "a_logs": {"dropped_duplicate": 1, "in": 2, "out": 1},
        "b_logs": {"dropped_duplicate": 1, "in": 2, "out": 1},
    }


def test_malformed_records_are_quarantined_in_order_with_reason_and_raw(tmp_path):
    bad_role = line(sharegpt("Hi", "Hello!") | {"conversations": [{"from": "bard", "value": "x"}]})
    content = f'{line(sharegpt("Hi", "Hello!"))}\n{{"conv\n\n{bad_role}\n'.encode() + b'{"caf\xe9"}\n'
    kept, quarantined, stats = run_clean_sources(
        tmp_path, {"logs": "sharegpt"}, {"logs": ("logs.jsonl", content)}
    )
    assert len(kept) == 1
    assert [(q["source"], q["location"]) for q in quarantined] == [
        ("logs", "logs.jsonl:2"),
        ("logs", "logs.jsonl:4"),
        ("logs", "logs.jsonl:5"),
    ]
    reasons = [q["reason"] for q in quarantined]
    assert reasons[0].startswith("invalid json: ")
    assert reasons[1].startswith("messages[0].from is 'bard', expected one of ")
    assert reasons[2].startswith("invalid utf-8: ")
    assert [q["raw"] for q in quarantined] == ['{"conv', bad_role, '{"caf\ufffd"}\n']
    assert (stats.records_in, stats.records_out, stats.quarantined) == (4, 1, 3)
    assert reconciles(stats)


def test_truncated_file_keeps_what_was_read_and_quarantines_the_fault(tmp_path):
    records = "".join(line(sharegpt(f"Question {i}?", f"Answer {i}.")) + "\n" for i in range(200)).encode()
    data = gzip.compress(records)
    kept, quarantined, stats = run_clean_sources(
        tmp_path, {"logs": "sharegpt"}, {"logs": ("logs.jsonl.gz", data[: len(data) - 40])}
    )
    assert 0 < len(kept) < 200
    assert [q["location"] for q in quarantined] == ["logs.jsonl.gz"]
    assert quarantined[0]["reason"].startswith("unreadable file: EOFError")
    assert stats.records_in == len(kept) + 1 and reconciles(stats)


# ---------------------------------------------------------------- the whole stage (stages/clean.py)


PIPPA_GOOD = {
    "bot_name": "Aqua",
    "bot_description": "{{char}} is a water goddess.",
    "categories": ["Anime"],
    "conversation": [
        {"message": "Hello, {{user}}!", "is_human": False},
        {"message": "Hi {{Char}}.", "is_human": True},
        {"message": "*splashes {{USER}}*", "is_human": False},
    ],
}
PIPPA_SPACED = {
    **PIPPA_GOOD,
    "conversation": [
        {"message": "Hello, {{user}}!  \r\n", "is_human": False},
        {"message": "Hi\u00a0{{Char}}.", "is_human": True},
        {"message": "*splashes {{USER}}*\u200b", "is_human": False},
    ],
}
PIPPA_NO_BOT = {"bot_name": "Aqua", "conversation": [{"message": "Anyone there?", "is_human": True}]}
ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate.", "input": "Hallo", "output": "Hello."},
    {"instruction": "No output here."},
]


def write_stage_inputs(root: Path, max_fraction: float) -> list[str]:
    """Three sources with good, duplicate, bot-less and malformed records; returns the malformed raw texts."""
    pippa_bad_json = '{"bot_name": "Aqua", "conversation": ['
    pippa_no_conversation = line({"bot_name": "Aqua"})
    pippa = (
        "\n".join(
            [
                line(PIPPA_GOOD),
                "",
                pippa_bad_json,
                pippa_no_conversation,
                line(PIPPA_SPACED),
                line(PIPPA_NO_BOT),
            ]
        )
        + "\n"
    )
    alpaca = "[\n" + ",\n".join(line(r) for r in ALPACA) + "\n]\n"
    share_bad_role = line({"conversations": [{"from": "bard", "value": "Hi"}]})
    fresh = "\n".join([line(sharegpt("How are you?", "Fine, thanks!")), share_bad_role]) + "\n"
    manifest = write_raw(
        root / "data" / "raw",
        {
            "community_logs": ("pippa.jsonl", pippa.encode()),
            "instructions": ("alpaca.json", alpaca.encode()),
            "fresh_logs": ("fresh.jsonl.gz", gzip.compress(fresh.encode(), mtime=0)),
        },
    )
    (root / "data" / "raw" / "manifest.json").write_text(json.dumps(manifest))
    sources = {
        "community_logs": {"uri": "src/pippa.jsonl", "format": "pippa", "trim": True, "weight": 0.7},
        "instructions": {"uri": "src/alpaca.json", "format": "alpaca", "trim": False, "weight": 0.1},
        "fresh_logs": {"uri": "src/fresh.jsonl.gz", "format": "sharegpt", "trim": True, "weight": 0.2},
    }
    clean_section = default_clean_params(max_quarantine_fraction=max_fraction)
    write_workspace(root, {"sources": sources, "clean": clean_section}, replace=True)
    return [pippa_bad_json, pippa_no_conversation, line(ALPACA[2]), share_bad_role]


def output_bytes(root: Path) -> dict[str, bytes]:
    out = root / "data" / "clean"
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def test_main_writes_conversations_quarantine_and_reconciled_stats(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad_raw = write_stage_inputs(tmp_path, max_fraction=0.5)
    run_stage("clean")

    assert sorted(output_bytes(tmp_path)) == ["conversations.parquet", "quarantine.jsonl", "stats.json"]
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".")] == []
    rows = pq.read_table(tmp_path / "data" / "clean" / "conversations.parquet").to_pylist()
    assert [row["source"] for row in rows] == ["community_logs", "fresh_logs", "instructions", "instructions"]
    assert len({row["id"] for row in rows}) == 4
    aqua = rows[0]
    assert aqua["persona"] == "Aqua is a water goddess."
    assert [(t["role"], t["name"], t["text"]) for t in aqua["turns"]] == [
        ("bot", "Aqua", "Hello, You!"),
        ("user", "You", "Hi Aqua."),
        ("bot", "Aqua", "*splashes You*"),
    ]
    assert rows[3]["turns"][0]["text"] == "Translate.\n\nHallo"

    quarantine = [json.loads(q) for q in (tmp_path / "data/clean/quarantine.jsonl").read_text().splitlines()]
    assert all(set(q) == {"source", "location", "reason", "raw"} and q["reason"] for q in quarantine)
    assert [(q["source"], q["location"]) for q in quarantine] == [
        ("community_logs", "pippa.jsonl:3"),
        ("community_logs", "pippa.jsonl:4"),
        ("fresh_logs", "fresh.jsonl.gz:2"),
        ("instructions", "alpaca.json:#2"),
    ]
    assert sorted(q["raw"] for q in quarantine) == sorted(bad_raw)  # nothing lost

    stats = json.loads((tmp_path / "data/clean/stats.json").read_text())
    assert (stats["in"], stats["out"], stats["quarantined"]) == (10, 4, 4)
    assert stats["dropped"] == {"duplicate": 1, "no_bot_turn": 1}
    assert stats["pii"] == dict.fromkeys(
        ["api_key", "card_number", "credential_url", "email", "ip_address", "phone"], 0
    )
    assert stats["near_duplicate"] == {"clusters": 0, "dropped": 0, "indexed": 4}
    assert stats["in"] == stats["out"] + sum(stats["dropped"].values()) + stats["quarantined"]
    assert stats["sources"] == {
        "community_logs": {
            "dropped_duplicate": 1,
            "dropped_no_bot_turn": 1,
            "in": 5,
            "out": 1,
            "quarantined": 2,
        },
        "fresh_logs": {"in": 2, "out": 1, "quarantined": 1},
        "instructions": {"in": 3, "out": 2, "quarantined": 1},
    }
    for name, counts in stats["sources"].items():
        dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
        assert counts["in"] == counts.get("out", 0) + dropped + counts.get("quarantined", 0), name


# Code and layout as instruction data and chat models write them: indentation, blank lines inside code
# (two between top-level functions), trailing spaces (\x20) and tabs inside fences, nested lists, an
# aligned table.
PYTHON_UNFENCED = """import json


def merge(first, second):
    \"\"\"Keys of  second win; nested dictionaries are merged too.\"\"\"
    result = dict(first)
    for key, value in second.items():
        if isinstance(value, dict):
            result[key] = merge(result.get(key, {}), value)

        else:
            result[key] = value
    return result"""
YAML_UNFENCED = """pipeline:
  stages:
    clean:
      cmd: python stages/clean.py
      deps:
        - data/raw

    mix:
      script: |
        line one
          indented two

        after a blank line"""
MARKDOWN = """Here is the plan:

1.  Install the tools:
    - `make setup`
      - it pins every version
    - `make test`
2.  Run it.

| key     | default | meaning            |
|---------|--------:|--------------------|
| seed    |       0 | the shuffle's seed |
| workers |       0 | all cores          |

```python
def f(x):\x20\x20
    return x


print(f(1))
```

~~~yaml
# a fence of tildes; ``` inside it is text
a:
  b:
    - 1
    -   2
~~~

    an indented code block
    \tline two"""
MAKEFILE_REPLY = """With tabs, as make wants them:

```make
all:
\tpython -m build \\
\t\t--wheel\x20\x20\x20
```"""


def test_code_and_layout_come_out_of_the_clean_stage_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = [PYTHON_UNFENCED, YAML_UNFENCED, MARKDOWN]
    alpaca = [
        {"instruction": f"Show me example {i}.", "input": "", "output": o} for i, o in enumerate(outputs)
    ]
    chat = sharegpt("Write a Makefile.", MAKEFILE_REPLY, "And again, with Windows line ends?")
    chat["conversations"].append({"from": "gpt", "value": MARKDOWN.replace("\n", "\r\n")})
    manifest = write_raw(
        tmp_path / "data" / "raw",
        {"tasks": ("tasks.json", json.dumps(alpaca).encode()), "chat": ("chat.jsonl", line(chat).encode())},
    )
    (tmp_path / "data" / "raw" / "manifest.json").write_text(json.dumps(manifest))
    sources = {
        "tasks": {"uri": "src/tasks.json", "format": "alpaca", "trim": False, "weight": 0.5},
        "chat": {"uri": "src/chat.jsonl", "format": "sharegpt", "trim": True, "weight": 0.5},
    }
    write_workspace(tmp_path, {"sources": sources, "clean": default_clean_params()}, replace=True)
    run_stage("clean")

    rows = pq.read_table(tmp_path / "data" / "clean" / "conversations.parquet").to_pylist()
    assert [row["source"] for row in rows] == ["chat", "tasks", "tasks", "tasks"]
    assert [turn["text"] for turn in rows[0]["turns"] if turn["role"] == "bot"] == [MAKEFILE_REPLY, MARKDOWN]
    assert [row["turns"][1]["text"] for row in rows[1:]] == outputs


def test_main_twice_gives_byte_identical_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stage_inputs(tmp_path, max_fraction=0.5)
    run_stage("clean")
    first = output_bytes(tmp_path)
    run_stage("clean")
    assert output_bytes(tmp_path) == first


def test_main_fails_when_too_much_is_quarantined_but_leaves_quarantine_to_read(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_stage_inputs(tmp_path, max_fraction=0.25)
    with pytest.raises(SystemExit) as exit_info:
        run_stage("clean")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: clean: 4 of 10 records (40.0%) were quarantined")
    assert "clean.max_quarantine_fraction=0.25" in err and "quarantine.jsonl" in err
    assert len((tmp_path / "data/clean/quarantine.jsonl").read_text().splitlines()) == 4


def test_main_at_exactly_the_quarantine_limit_succeeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stage_inputs(tmp_path, max_fraction=0.4)
    run_stage("clean")
    assert json.loads((tmp_path / "data/clean/stats.json").read_text())["quarantined"] == 4


# ---------------------------------------------------------------- workers


def varied_inputs(root: Path) -> None:
    """Two sources whose records end every way there is (kept, quarantined, each drop reason, PII
    replaced), interleaved so that every batch holds several kinds."""
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(400)]

    def words(count: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(count))

    originals = [[words(30) for _ in range(4)] for _ in range(24)]
    lines = []
    for i, turns in enumerate(originals):
        pii = f" Mail ann{i}@example.com or call +44 20 7946 09{i:02d}." if i % 4 == 0 else ""
        lines.append(line(sharegpt(turns[0] + pii, *turns[1:], id=f"original-{i}")))
        if i % 3 == 0:  # a near-copy: one word changed
            lines.append(line(sharegpt(*turns[:3], turns[3].replace(" ", " changed ", 1), id=f"near-{i}")))
        if i % 4 == 1:  # an exact copy after normalisation
            lines.append(line(sharegpt(*(f" {t}\r\n" for t in turns), id=f"copy-{i}")))
        if i % 5 == 2:
            lines += ['{"conversations": [', line(sharegpt(words(5)))]  # malformed; no bot turn
        if i % 6 == 3:  # a bot that loops
            reply = words(12)
            lines.append(line(sharegpt(*[text for _ in range(4) for text in (words(6), reply)])))
    pippa = "".join(line(r) + "\n" for r in [PIPPA_GOOD, PIPPA_SPACED, PIPPA_NO_BOT, {"bot_name": "Aqua"}])
    manifest = write_raw(
        root / "data" / "raw",
        {
            "chat": ("chat.jsonl", ("\n".join(lines) + "\n").encode()),
            "pippa": ("pippa.jsonl.gz", gzip.compress(pippa.encode(), mtime=0)),
        },
    )
    (root / "data" / "raw" / "manifest.json").write_text(json.dumps(manifest))


def write_params(root: Path, **clean_changes) -> None:
    sources = {
        "chat": {"uri": "src/chat.jsonl", "format": "sharegpt", "trim": True, "weight": 0.5},
        "pippa": {"uri": "src/pippa.jsonl.gz", "format": "pippa", "trim": True, "weight": 0.5},
    }
    clean_section = default_clean_params(max_quarantine_fraction=1.0, **clean_changes)
    write_workspace(root, {"sources": sources, "clean": clean_section}, replace=True)


def test_outputs_are_byte_identical_for_one_and_two_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(clean, "CLEAN_BATCH", 3)  # many batches, so the order across workers matters
    monkeypatch.chdir(tmp_path)
    varied_inputs(tmp_path)
    outputs = {}
    for workers in (1, 2):
        write_params(tmp_path, workers=workers)
        run_stage("clean")
        outputs[workers] = output_bytes(tmp_path)
    assert outputs[1] == outputs[2]
    stats = json.loads(outputs[2]["stats.json"])
    assert set(stats["dropped"]) == {"duplicate", "looping_bot", "near_duplicate", "no_bot_turn"}
    assert stats["quarantined"] == 6 and stats["in"] > 15 * clean.CLEAN_BATCH
    assert stats["pii"]["email"] == stats["pii"]["phone"] == 6


def test_negative_workers_is_a_params_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    varied_inputs(tmp_path)
    write_params(tmp_path, workers=-1)
    with pytest.raises(SystemExit):
        run_stage("clean")
    assert capsys.readouterr().err == (
        "error: params.yaml: clean.workers=-1 must be an integer >= 0 (0 = all cores)\n"
    )
    assert not (tmp_path / "data" / "clean").exists()  # stopped before cleaning anything
