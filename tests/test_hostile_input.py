"""Hostile input (issue 3, item 6): malformed records and files, each run through the real clean stage.

Every case is a small source file, most of them the hostile record between two good ones, cleaned by
the clean stage (stages/clean.py, as DVC runs it) in a scratch workspace. None may crash the stage.
Each case names its outcome:

- kept: the record is benign (a BOM, CRLF, an unknown extra field, turns that do not alternate, ...);
- quarantined: in quarantine.jsonl with a reason matching a pattern and its raw text (nothing lost);
- dropped: a well-formed record with nothing to train on, under a named reason (no_bot_turn, duplicate);
- fails: a fault of the whole file (empty, unreadable, another format than params say): the stage stops
  with a one-line error and no traceback;
- accounted: only "no crash, every record accounted for" (a 10 MB message: a too-long filter may drop it).

Whatever the outcome, the good records survive and stats.json reconciles exactly, in total and per source:
in == out + sum(dropped) + quarantined.
"""

import copy
import datetime
import gzip
import hashlib
import io
import json
import math
import re
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard
from conftest import DEFAULT_PARAMS, run_stage, write_workspace

from chatmill.clean import to_conversation
from chatmill.containers import RawRecord
from chatmill.records import RecordError

SOURCE = "logs"

# ---------------------------------------------------------------- good records, by format
# Three distinct, ordinary conversations per format: the first two sit around each hostile record and must
# survive it; the third is the base of the benign variants. Long and varied enough for any quality filter.


def sharegpt(*texts: str, **fields) -> dict:
    """A sharegpt record whose turns alternate human, gpt, human, ..."""
    return {
        "conversations": [{"from": ("human", "gpt")[i % 2], "value": t} for i, t in enumerate(texts)]
    } | fields


def pippa(bot: str, description: str, *turns: tuple[bool, str], **fields) -> dict:
    conversation = [{"message": text, "is_human": is_human} for is_human, text in turns]
    return {"bot_name": bot, "bot_description": description, "conversation": conversation} | fields


def openai(system: str, *texts: str) -> dict:
    chat = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)]
    return {"messages": [{"role": "system", "content": system}, *chat]}


def alpaca(instruction: str, output: str, extra_input: str = "") -> dict:
    return {"instruction": instruction, "input": extra_input, "output": output}


GOOD = {
    "sharegpt": [
        sharegpt(
            "What should I pack for a weekend hike in the mountains?",
            "Bring layers you can add or remove, a rain shell, two litres of water, salty snacks, a map, "
            "a headlamp and a small first aid kit, and tell someone your route before you leave.",
        ),
        sharegpt(
            "How do I keep basil alive on a windowsill?",
            "Give it six hours of sun, water it when the top of the soil feels dry, and pinch off the flower "
            "buds so that the plant keeps putting its energy into new leaves instead of seeds.",
        ),
        sharegpt(
            "Why does bread go stale so quickly?",
            "As the loaf cools the starch slowly recrystallises and pushes water out of the crumb, which "
            "turns firm and dry; wrapping it tightly or freezing the slices slows that down a great deal.",
        ),
    ],
    "pippa": [
        pippa(
            "Mira",
            "{{char}} runs the Copper Kettle inn and remembers every guest.",
            (False, "*Mira wipes the counter and smiles.* Welcome in, {{user}}! The stew is hot tonight."),
            (True, "I'd like a room for two nights, please."),
            (
                False,
                "Two nights it is. That comes to eight silver with breakfast, and your key is the brass one "
                "with the blue ribbon, at the top of the stairs.",
            ),
        ),
        pippa(
            "Captain Rell",
            "{{char}} commands a leaky merchant ship and trusts nobody.",
            (
                False,
                "*The deck lurches under your feet.* Grab a rope, {{user}}, this storm is only starting!",
            ),
            (True, "What do you need me to do?"),
            (
                False,
                "Tie down those barrels by the mast before they roll overboard, then get below and help the "
                "cook bail water out of the galley.",
            ),
        ),
        pippa(
            "Professor Lune",
            "{{char}} teaches astronomy and loses track of time when talking about comets.",
            (False, "Ah, {{user}}, you are just in time. Have you ever watched a comet through a telescope?"),
            (True, "Never. Is it hard to find one?"),
            (
                False,
                "Not with a good chart. Look low in the western sky an hour after sunset, and follow the "
                "faint smudge of its tail away from where the sun went down.",
            ),
        ),
    ],
    "openai": [
        openai(
            "You are a patient maths tutor.",
            "Why is any number to the power of zero equal to one?",
            "Each step down in the exponent divides by the base once more, so going from the first power "
            "to the zeroth divides the base by itself, which leaves one for any base that is not zero.",
        ),
        openai(
            "You answer questions about bicycles.",
            "How often should I oil my bike chain?",
            "Every few hundred kilometres, or after any ride in the rain: wipe the chain clean, put one drop "
            "of oil on each roller, let it soak in for a few minutes and then wipe off whatever is left.",
        ),
        openai(
            "You are a friendly librarian.",
            "Can you suggest a short novel for a long train ride?",
            "Try a compact classic such as a short detective story or a novella of about two hundred pages; "
            "it is long enough to fill a journey and short enough to finish before you reach the station.",
        ),
    ],
    "alpaca": [
        alpaca(
            "Explain what a rainbow is in two sentences.",
            "A rainbow appears when sunlight enters raindrops, bends, reflects off the back of each drop and "
            "splits into its colours. Each colour leaves the drops at a slightly different angle, which "
            "spreads them into an arc across the sky.",
        ),
        alpaca(
            "Write a polite reminder about an unpaid invoice.",
            "Dear customer, this is a friendly reminder that the invoice we sent last month is still open. "
            "Please let us know if anything is unclear, and thank you for settling it at your convenience.",
            extra_input="Invoice number 2023-0042, due on the first of March.",
        ),
        alpaca(
            "List three uses for baking soda around the house.",
            "Baking soda deodorises a refrigerator when left open in a small bowl, scrubs burnt pans as a "
            "paste with a little water, and freshens a carpet sprinkled on it and vacuumed up an hour later.",
        ),
    ],
}
REPLIES = {  # the good records' last bot reply: found in the output when they survived
    "sharegpt": [r["conversations"][-1]["value"] for r in GOOD["sharegpt"][:2]],
    "pippa": [r["conversation"][-1]["message"] for r in GOOD["pippa"][:2]],
    "openai": [r["messages"][-1]["content"] for r in GOOD["openai"][:2]],
    "alpaca": [r["output"] for r in GOOD["alpaca"][:2]],
}
TEN_MB = ("The lighthouse keeper counted the waves again, as he did every night. " * 150_000)[: 10 << 20]


def extra(fmt: str, **changes) -> dict:
    """The third good record of a format, changed."""
    return GOOD[fmt][2] | changes


def with_reply(fmt: str, reply: str) -> dict:
    """The third good record with its last bot reply replaced."""
    record = json.loads(json.dumps(GOOD[fmt][2]))
    if fmt == "sharegpt":
        record["conversations"][-1]["value"] = reply
    elif fmt == "alpaca":
        record["output"] = reply
    return record


# ---------------------------------------------------------------- file builders


def encode(item) -> bytes:
    """A record as written: bytes and str verbatim, anything else as JSON."""
    if isinstance(item, bytes):
        return item
    return (item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)).encode()


def jsonl(*items, end: bytes = b"\n") -> bytes:
    return b"".join(encode(item) + end for item in items)


def array(*items) -> bytes:
    return b"[\n" + b",\n".join(encode(item) for item in items) + b"\n]\n"


def parquet(rows: list[dict], schema: pa.Schema | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    return buffer.getvalue()


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def flip_crc(data: bytes) -> bytes:
    """A gzip file whose data is intact but whose CRC trailer is wrong."""
    return data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Expect:
    out: int = 3  # conversations written: the two good records, and the hostile one when it is benign
    dropped: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    reason: str = ""  # a pattern every quarantine reason matches
    error: str = ""  # a pattern of the one-line error when the stage must stop
    accounted: bool = False  # check only: no crash, stats reconcile, good records survive


KEPT = Expect()
ACCOUNTED = Expect(accounted=True)


def quarantined(reason: str) -> Expect:
    return Expect(out=2, quarantined=1, reason=reason)


def dropped(reason: str) -> Expect:
    return Expect(out=2, dropped={reason: 1})


def fails(error: str) -> Expect:
    return Expect(error=error)


@dataclass(frozen=True)
class Case:
    name: str
    format: str  # sources.logs.format
    file_name: str
    content: bytes | None  # None: the file is not there
    expect: Expect
    raw: str | None = None  # the quarantined raw text, when the case knows it exactly
    partial: bool = False  # the raw is a non-empty prefix of `raw` (the file was cut inside the record)
    max_fraction: float = 1.0  # clean.max_quarantine_fraction: by default no share stops the stage


def line(name: str, fmt: str, bad, expect: Expect) -> Case:
    """A JSON Lines file: good record, the hostile line, good record."""
    text = encode(bad)
    raw = text.decode("utf-8", "replace") if expect.quarantined else None
    return Case(name, fmt, f"{fmt}.jsonl", jsonl(GOOD[fmt][0], text, GOOD[fmt][1]), expect, raw)


def element(name: str, fmt: str, bad, expect: Expect) -> Case:
    """A JSON array file: good record, the hostile element, good record."""
    text = encode(bad)
    raw = text.decode("utf-8", "replace") if expect.quarantined else None
    return Case(name, fmt, f"{fmt}.json", array(GOOD[fmt][0], text, GOOD[fmt][1]), expect, raw)


def whole(name: str, fmt: str, file_name: str, content: bytes | None, expect: Expect, **options) -> Case:
    """A whole file, written as it is."""
    return Case(name, fmt, file_name, content, expect, **options)


S, P, OA, A = "sharegpt", "pippa", "openai", "alpaca"
G = GOOD[S]
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 5000
CUT = encode(G[2])[:60]  # a record cut short
REPLY_2 = G[2]["conversations"][1]["value"]
LONG = with_reply(S, TEN_MB[:4000])  # long enough that a cut inside it leaves a readable part
LONE_SURROGATE = json.dumps(
    sharegpt("Hi \ud83d", "A half emoji cannot be written out as UTF-8, so this is out.")
)

# One row per kind of hostile input: name, format, what is in the file, the outcome.
# fmt: off
CASES = [
    # ---- JSON Lines (sharegpt): broken text
    line("invalid_json", S, '{"conversations": [{"from": "human", "value": "Hi"}',
         quarantined("^invalid json: ")),
    line("invalid_utf8", S, b'{"conversations": [{"from": "human", "value": "caf\xe9"}]}',
         quarantined("^invalid utf-8")),
    line("raw_nul_byte_in_a_string", S, b'{"conversations": [{"from": "human", "value": "a\x00b"}]}',
         quarantined("^invalid json: Invalid control character")),
    line("nul_padding_line", S, b"\x00" * 4096, quarantined("^invalid json: ")),  # a crash left zeros behind
    line("deeply_nested_json", S, DEEP, quarantined("^invalid json: .*recursion")),
    line("integer_of_5000_digits", S, f'{{"conversations": [], "id": {HUGE_INT}}}',
         quarantined(r"^invalid json: Exceeds the limit \(4300 digits\)")),
    line("lone_surrogate_escape", S, LONE_SURROGATE, quarantined("^invalid unicode: surrogates not allowed")),
    whole("last_line_cut_without_newline", S, "cut.jsonl", jsonl(G[0], G[1]) + CUT,
          quarantined("^invalid json: "), raw=CUT.decode()),
    # ---- JSON Lines (sharegpt): wrong shapes and types
    line("record_is_an_array", S, [G[2]], quarantined("^record is list, expected an object$")),
    line("record_is_a_string", S, '"hello"', quarantined("^record is str, expected an object$")),
    line("record_is_null", S, "null", quarantined("^record is NoneType, expected an object$")),
    line("missing_field", S, {"messages": G[2]["conversations"]},
         quarantined("^missing field 'conversations'$")),
    line("field_of_wrong_type", S, {"conversations": "Hi there"},
         quarantined("^field 'conversations' is str, expected list$")),
    line("optional_field_of_wrong_type", S, extra(S, bot_name=7), quarantined("^field 'bot_name' is int")),
    line("turn_is_not_an_object", S, {"conversations": [G[2]["conversations"][0], "Sure!"]},
         quarantined(r"^messages\[1\] is str, expected an object$")),
    line("turn_text_is_a_number", S, sharegpt("How many?", 42),
         quarantined(r"^field 'messages\[1\].value' is int")),
    line("turn_text_is_null", S, sharegpt("Anyone?", None),
         quarantined(r"^missing field 'messages\[1\].value'$")),
    line("turn_text_is_nan", S, '{"conversations": [{"from": "human", "value": NaN}]}',
         quarantined(r"^field 'messages\[0\].value' is float")),
    line("unknown_role", S, {"conversations": [{"from": "bard", "value": "Hello."}]},
         quarantined(r"^messages\[0\].from is 'bard', expected one of ")),
    # ---- JSON Lines (sharegpt): benign oddities, kept
    whole("utf8_bom", S, "bom.jsonl", b"\xef\xbb\xbf" + jsonl(G[0], G[2], G[1]), KEPT),
    whole("bom_on_every_line", S, "boms.jsonl", b"".join(b"\xef\xbb\xbf" + jsonl(r) for r in G), KEPT),
    whole("crlf_line_endings", S, "crlf.jsonl", jsonl(*G, end=b"\r\n"), KEPT),
    whole("cr_only_line_endings", S, "cr.jsonl", jsonl(*G, end=b"\r"), KEPT),
    whole("blank_and_whitespace_lines", S, "blank.jsonl",
          b"\n \t \n" + jsonl(G[0]) + b"\r\n\n" + jsonl(G[2], G[1]) + b"   \n\n", KEPT),
    line("escaped_nul_and_control_characters", S,
         with_reply(S, REPLY_2 + "\u0000 \u001b[0m\u0007 \u200b\ufeff"), KEPT),
    line("unknown_extra_fields", S, extra(S, model="gpt-4", rating=[5, None], nested={"a": [{}]}), KEPT),
    line("duplicate_json_keys_last_wins", S,
         '{"conversations": [{"from": "bard", "value": "x"}], ' + json.dumps(G[2])[1:], KEPT),
    # Two user turns in a row (someone sent two messages) and two bot turns in a row are legal in chat logs,
    # and the prompt format writes each turn on its own line: kept as they are.
    line("non_alternating_turns", S, {"conversations": [
        {"from": "human", "value": "Hello?"}, *G[2]["conversations"],
        {"from": "gpt", "value": "Also: a paper bag keeps the crust crisp, a plastic one does not."}]}, KEPT),
    line("bot_turn_only", S, {"conversations": G[2]["conversations"][1:]}, KEPT),
    # ---- JSON Lines (sharegpt): well formed, but nothing to train on, or seen before
    line("only_human_turns", S, sharegpt("Is anyone there?"), dropped("no_bot_turn")),
    line("empty_conversation", S, {"conversations": []}, dropped("no_bot_turn")),
    line("bot_turn_blank_after_normalisation", S, sharegpt("Hello?", " \u200b\t\u00a0"),
         dropped("no_bot_turn")),
    line("identical_records", S, G[0], dropped("duplicate")),
    line("duplicate_after_normalisation", S, sharegpt(G[0]["conversations"][0]["value"] + "  ",
                                                      "\u200b" + G[0]["conversations"][1]["value"] + "\r\n"),
         dropped("duplicate")),
    # chatmill's id is a hash of the content: one source-side id on different conversations is no duplicate
    whole("same_source_id_different_content", S, "ids.jsonl", jsonl(*(r | {"id": "c-1"} for r in G)), KEPT),
    line("ten_mb_message", S, with_reply(S, TEN_MB), ACCOUNTED),
    # ---- pippa
    line("pippa_is_human_as_string", P,
         {"bot_name": "Mira", "conversation": [{"message": "Hello.", "is_human": "true"}]},
         quarantined(r"^field 'conversation\[0\].is_human' is str, expected bool$")),
    line("pippa_missing_bot_name", P, {"conversation": GOOD[P][2]["conversation"]},
         quarantined("^missing field 'bot_name'$")),
    line("pippa_message_null", P, pippa("Mira", "", (False, "Hello."), (True, None)),
         quarantined(r"^missing field 'conversation\[1\].message'$")),
    line("pippa_only_human_turns", P, pippa("Mira", "", (True, "Hello?"), (True, "Anyone home?")),
         dropped("no_bot_turn")),
    line("pippa_greeting_only", P, extra(P, conversation=GOOD[P][2]["conversation"][:1]), KEPT),
    line("pippa_odd_metadata", P, extra(P, categories={"genre": [None]}, submission_timestamp=1.5e9), KEPT),
    # ---- openai
    line("openai_tool_call_without_content", OA, {"messages": [
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [{}]}]},
         quarantined(r"^missing field 'messages\[1\].content'$")),
    line("openai_content_as_parts", OA, {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
         quarantined(r"^field 'messages\[0\].content' is list, expected str$")),
    line("openai_tool_role", OA, {"messages": [{"role": "tool", "content": "{}"}]},
         quarantined(r"^messages\[0\].role is 'tool', expected one of ")),
    line("openai_only_a_system_message", OA, {"messages": [{"role": "system", "content": "Be brief."}]},
         dropped("no_bot_turn")),
    # ---- JSON arrays (alpaca)
    element("array_element_invalid_json", A, '{"instruction": "Sort these.", "output": nope}',
            quarantined("^invalid json: Expecting value")),
    element("array_element_not_an_object", A, "42", quarantined("^record is int, expected an object$")),
    element("array_missing_comma", A, encode(GOOD[A][2]) + b" " + encode(alpaca("Say hi.", "Hi.")),
            quarantined("^invalid json: Extra data")),
    element("array_element_invalid_utf8", A, b'{"instruction": "Caf\xe9 menu", "output": "Coffee."}',
            quarantined("^invalid utf-8$")),
    element("array_element_deeply_nested", A, DEEP, quarantined("^invalid json: .*recursion")),
    element("array_element_integer_of_5000_digits", A, f'{{"instruction": "Count.", "output": {HUGE_INT}}}',
            quarantined("^invalid json: Exceeds the limit")),
    element("alpaca_missing_output", A, {"instruction": "Name a colour."},
            quarantined("^missing field 'output'$")),
    element("alpaca_input_is_a_number", A, alpaca("Double it.", "Ten.") | {"input": 5},
            quarantined("^field 'input' is int, expected str$")),
    element("alpaca_empty_output", A, alpaca("Say nothing.", "  "), dropped("no_bot_turn")),
    whole("array_trailing_and_double_commas", A, "commas.json", b"[" + encode(GOOD[A][0]) + b",,"
          + encode(GOOD[A][2]) + b", " + encode(GOOD[A][1]) + b",]", KEPT),
    whole("array_not_closed", A, "open.json", b"[" + jsonl(GOOD[A][0], GOOD[A][1], end=b",\n"),
          quarantined("^invalid json: array is not closed")),
    whole("array_cut_inside_an_element", A, "cut.json",
          b"[" + jsonl(GOOD[A][0], GOOD[A][1], end=b",\n") + encode(GOOD[A][2])[:50],
          quarantined("^invalid json: array is not closed"), raw=encode(GOOD[A][2])[:50].decode()),
    whole("text_after_the_array", A, "after.json", array(GOOD[A][0], GOOD[A][1]) + b"oops",
          quarantined("^invalid json: text after the end of the array$"), raw="oops"),
    whole("concatenated_arrays", A, "cat.json", array(GOOD[A][0]) + array(GOOD[A][2], GOOD[A][1]), KEPT),
    whole("json_file_holding_json_lines", A, "lines.json", jsonl(GOOD[A][0], GOOD[A][2], GOOD[A][1]), KEPT),
    element("ten_mb_output_in_an_array", A, with_reply(A, TEN_MB), ACCOUNTED),
    # ---- parquet
    whole("parquet_null_in_a_nested_field", P, "p.parquet",
          parquet([GOOD[P][0], pippa("Mira", "", (False, "Hello."), (None, "Hi.")), GOOD[P][1]]),
          quarantined(r"^missing field 'conversation\[1\].is_human'$")),
    whole("parquet_value_of_wrong_type", A, "a.parquet", parquet([
        GOOD[A][0] | {"input": None}, alpaca("Double it.", "Ten.") | {"input": 5},
        GOOD[A][1] | {"input": None}]),
          quarantined("^field 'input' is int, expected str$")),
    whole("parquet_extra_columns_of_odd_types", A, "odd.parquet", parquet([
        r | {"when": datetime.datetime(2023, 3, 3), "blob": b"\x00\xff", "score": math.nan}
        for r in GOOD[A]]),
          KEPT),
    # ---- gzip and zstd
    whole("gzip_truncated", S, "t.jsonl.gz", gz(jsonl(G[0], G[1])) + gz(jsonl(LONG))[:-30],
          quarantined("^unreadable file: EOFError"), raw=json.dumps(LONG, ensure_ascii=False), partial=True),
    whole("zstd_truncated", S, "t.jsonl.zst", zst(jsonl(G[0], G[1])) + zst(jsonl(G[2]))[:-10],
          quarantined("^unreadable file: EOFError")),
    whole("json_array_gzip_truncated", A, "t.json.gz", gz(array(*GOOD[A]))[:-40],
          Expect(out=2, quarantined=1, reason="^unreadable file: EOFError")),
    whole("gzip_trailing_garbage", S, "g.jsonl.gz", gz(jsonl(*G)) + b"garbage!",
          Expect(quarantined=1, reason="^unreadable file: BadGzipFile: Not a gzipped file")),
    whole("gzip_crc_mismatch", S, "c.jsonl.gz", flip_crc(gz(jsonl(*G))),
          Expect(quarantined=1, reason="^unreadable file: BadGzipFile: CRC check failed")),
    whole("gzip_of_several_members", S, "m.jsonl.gz", b"".join(gz(jsonl(r)) for r in G), KEPT),
    whole("zstd_of_several_frames", S, "m.jsonl.zst", b"".join(zst(jsonl(r)) for r in G), KEPT),
    # ---- faults of the whole file: the stage stops with a one-line error
    whole("empty_file", S, "empty.jsonl", b"", fails("empty.jsonl holds no records; check sources.logs.uri")),
    whole("whitespace_only_file", S, "ws.jsonl", b"\n \r\n\t\n", fails("holds no records")),
    whole("empty_json_array", A, "empty.json", b" [ ]\n", fails("holds no records")),
    whole("empty_gzip", S, "empty.jsonl.gz", gz(b""), fails("holds no records")),
    whole("empty_parquet", A, "empty.parquet", parquet([], pa.schema([("instruction", pa.string())])),
          fails("holds no records")),
    whole("lone_bracket", A, "bracket.json", b"[", fails("bracket.json: invalid json: array is not closed")),
    whole("not_gzip", S, "plain.jsonl.gz", jsonl(*G),
          fails("unreadable file: BadGzipFile: Not a gzipped file")),
    whole("not_zstd", S, "plain.jsonl.zst", jsonl(*G), fails("unreadable file: ZstdError")),
    whole("not_parquet", A, "bad.parquet", b"PAR1 this is not parquet", fails("unreadable file: Arrow")),
    whole("parquet_truncated", A, "cut.parquet", parquet(GOOD[A])[:-100], fails("unreadable file: Arrow")),
    whole("utf16_file", S, "u16.jsonl", jsonl(*G).decode().encode("utf-16"),
          fails(r"all \d+ of its records were quarantined \(is sources.logs.format right\?\)")),
    # Read as JSON Lines (its first character is not "["): only the line holding a whole element parses.
    # Under a real quarantine limit the share of quarantined lines stops the stage.
    whole("json_wrapped_in_an_object", A, "wrapped.json", b'{\n  "data": ' + array(*GOOD[A]) + b"}\n",
          fails(r"clean: 6 of 7 records \(85.7%\) were quarantined, more than"), max_fraction=0.05),
    whole("format_other_than_declared", P, "share.jsonl", jsonl(*G),
          fails("all 3 of its records were quarantined")),
    whole("unknown_container", S, "logs.csv", jsonl(*G), fails("logs.csv: unknown container")),
    whole("raw_file_missing", S, "gone.jsonl", None, fails("gone.jsonl is missing; run `dvc repro fetch`")),
    whole("unknown_format", "chatml", "logs.jsonl", jsonl(*G),
          fails(r"^error: params\.yaml: sources\.logs\.format is 'chatml'; known formats: pippa, ")),
]
# fmt: on


# ---------------------------------------------------------------- running the stage


def clean_params(max_fraction: float) -> dict:
    """The repository's `clean` section (filters and all), with the quarantine limit of the test."""
    return copy.deepcopy(DEFAULT_PARAMS["clean"]) | {"max_quarantine_fraction": max_fraction}


def write_stage(root: Path, case: Case, max_fraction: float = 1.0) -> None:
    """params.yaml with one source (and its dvc.yaml), data/raw/manifest.json and the file, as fetch
    leaves them."""
    folder = root / "data" / "raw" / SOURCE
    folder.mkdir(parents=True)
    if case.content is not None:
        (folder / case.file_name).write_bytes(case.content)
    content = case.content or b""
    manifest = {
        SOURCE: {
            "uri": f"src/{case.file_name}",
            "file": f"{SOURCE}/{case.file_name}",
            "bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
    }
    (root / "data" / "raw" / "manifest.json").write_text(json.dumps(manifest))
    source = {"uri": f"src/{case.file_name}", "format": case.format, "trim": True, "weight": 1.0}
    write_workspace(root, {"sources": {SOURCE: source}, "clean": clean_params(max_fraction)}, replace=True)


def run(stage: str, capsys) -> tuple[int, str]:
    """Run stages/STAGE.py; (exit status, stderr). Any exception but the one-line exit is a crash."""
    try:
        run_stage(stage)
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


def outputs(root: Path) -> tuple[dict, list[dict], list[dict]]:
    out = root / "data" / "clean"
    stats = json.loads((out / "stats.json").read_text())
    rows = pq.read_table(out / "conversations.parquet").to_pylist()
    quarantine = [json.loads(q) for q in (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    return stats, rows, quarantine


def assert_reconciled(stats: dict, rows: list, quarantine: list) -> None:
    assert stats["in"] == stats["out"] + sum(stats["dropped"].values()) + stats["quarantined"]
    assert (len(rows), len(quarantine)) == (stats["out"], stats["quarantined"])
    for name, counts in stats["sources"].items():
        dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
        assert counts["in"] == counts.get("out", 0) + dropped + counts.get("quarantined", 0), name
    assert sum(counts["in"] for counts in stats["sources"].values()) == stats["in"]


def assert_quarantine_entries_complete(quarantine: list) -> None:
    for entry in quarantine:
        assert set(entry) == {"source", "location", "reason", "raw"} and entry["source"] == SOURCE
        assert entry["reason"] and "\n" not in entry["reason"] and len(entry["reason"]) < 300
        if ":" in entry["location"]:  # a record (file:line, file:#index), not the file: its text is kept
            assert entry["raw"], entry


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff]")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case: Case, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_stage(tmp_path, case, case.max_fraction)
    status, err = run("clean", capsys)
    expect = case.expect

    if expect.error:
        assert status == 1 and err.startswith("error: ") and err.count("\n") == 1, err
        assert re.search(expect.error, err), err
        return
    assert status == 0, err
    stats, rows, quarantine = outputs(tmp_path)
    assert_reconciled(stats, rows, quarantine)
    assert_quarantine_entries_complete(quarantine)
    texts = [turn["text"] for row in rows for turn in row["turns"]]
    assert not any(CONTROL.search(text) for text in texts)
    for reply in REPLIES.get(case.format, []):  # the good records around the hostile one survive
        assert any(reply[:60] in text for text in texts), reply
    if expect.accounted:
        return

    assert (stats["out"], stats["dropped"], stats["quarantined"]) == (
        expect.out,
        expect.dropped,
        expect.quarantined,
    )
    assert all(re.search(expect.reason, entry["reason"]) for entry in quarantine), quarantine
    if case.raw is not None:
        [entry] = quarantine
        if case.partial:
            assert entry["raw"] and case.raw.startswith(entry["raw"]), entry["raw"][:100]
        else:
            assert entry["raw"].strip() == case.raw.strip()


def test_the_table_is_wide():
    """The issue asks for at least 30 kinds, across every format and container."""
    assert len(CASES) >= 30 and len({case.name for case in CASES}) == len(CASES)
    assert {case.format for case in CASES} >= {"pippa", "sharegpt", "openai", "alpaca"}
    suffixes = {Path(case.file_name).suffix for case in CASES}
    assert suffixes >= {".jsonl", ".json", ".parquet", ".gz", ".zst"}


# ---------------------------------------------------------------- beyond the table


def test_quarantine_over_the_limit_fails_in_one_line_and_leaves_the_outputs_to_read(
    tmp_path: Path, monkeypatch, capsys
):
    """Every quarantined JSON Lines case of the table in one file, with the two good records: the stage
    stops with one line, and conversations, quarantine and stats are still there to inspect."""
    bad = [case for case in CASES if case.file_name == "sharegpt.jsonl" and case.expect.quarantined]
    content = jsonl(G[0], *(case.content.split(b"\n")[1] for case in bad), G[1])  # the middle lines
    monkeypatch.chdir(tmp_path)
    write_stage(tmp_path, whole("all", S, "all.jsonl", content, KEPT), max_fraction=0.05)
    status, err = run("clean", capsys)

    total = len(bad) + 2
    assert status == 1 and err.count("\n") == 1, err
    assert err.startswith(
        f"error: clean: {len(bad)} of {total} records ({len(bad) / total:.1%}) were quarantined"
    )
    assert "more than clean.max_quarantine_fraction=0.05; see data/clean/quarantine.jsonl" in err
    stats, rows, quarantine = outputs(tmp_path)
    assert_reconciled(stats, rows, quarantine)
    assert_quarantine_entries_complete(quarantine)
    assert (stats["in"], stats["out"], stats["quarantined"]) == (total, 2, len(bad))
    assert [entry["raw"].strip() for entry in quarantine] == [case.raw.strip() for case in bad]  # in order

    # at exactly the limit the stage passes
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["clean"]["max_quarantine_fraction"] = len(bad) / total
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert run("clean", capsys)[0] == 0


def test_ten_mb_message_costs_memory_in_proportion(tmp_path: Path, monkeypatch, capsys):
    """Python-side peak memory while cleaning one 10 MB message (parquet's own buffers are not counted)."""
    monkeypatch.chdir(tmp_path)
    write_stage(tmp_path, line("ten_mb", S, with_reply(S, TEN_MB), ACCOUNTED))
    tracemalloc.start()
    try:
        status, err = run("clean", capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 0, err
    # about 7x today: the line, its text, the parsed value, the normalised copy, the id hash, the check
    # that it can be written. Over 13x before normalize_text stopped matching every single space.
    assert peak < 12 * len(TEN_MB), f"peak {peak / 2**20:.0f} MiB for a {len(TEN_MB) / 2**20:.0f} MiB message"


def test_a_field_nested_too_deeply_to_serialise_is_quarantined_not_a_crash():
    """A parquet row (or any value that the JSON parser did not limit) too deep for meta's json.dumps."""
    categories: list = []
    for _ in range(5000):
        categories = [categories]
    record = GOOD[P][0] | {"categories": categories}
    with pytest.raises(RecordError, match="^nested too deeply to serialise$"):
        to_conversation(RawRecord("x.parquet:#0", value=record), SOURCE, P)


def test_unknown_format_is_a_one_line_error_before_clean_reads_or_writes(tmp_path: Path, monkeypatch, capsys):
    """The record format is clean's to check (fetch reads no format): the stage stops before it reads."""
    monkeypatch.chdir(tmp_path)
    write_stage(tmp_path, whole("unknown_format", "chatml", "logs.jsonl", jsonl(*G), KEPT))
    (tmp_path / "data" / "raw" / "manifest.json").unlink()  # reading anything would fail on this first
    status, err = run("clean", capsys)
    error = "params.yaml: sources.logs.format is 'chatml'; known formats: pippa, sharegpt, openai, alpaca"
    assert status == 1 and err == f"error: {error}\n", err
    assert not (tmp_path / "data" / "clean").exists()


# ---------------------------------------------------------------- fetch: faults of the whole file


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("data/sources/missing.jsonl", "fetch: source 'logs': data/sources/missing.jsonl not found"),
        ("data/sources", "fetch: source 'logs': cannot read data/sources: Is a directory"),
        ("ftp://example.com/logs.jsonl", "params.yaml: sources.logs.uri 'ftp://example.com/logs.jsonl' has"),
    ],
    ids=["missing_file", "a_directory", "unknown_scheme"],
)
def test_fetch_fault_is_a_one_line_error(tmp_path: Path, monkeypatch, capsys, uri, error):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "sources").mkdir(parents=True)
    (tmp_path / "data" / "sources" / "logs.jsonl").write_bytes(jsonl(*G))
    source = {"uri": "data/sources/logs.jsonl", "format": S, "trim": True, "weight": 1.0}
    write_workspace(tmp_path, {"sources": {SOURCE: source}}, replace=True)
    # The uri goes in after dvc.yaml is written: writing it checks uris too, and would refuse ftp://.
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["sources"][SOURCE]["uri"] = uri
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status, err = run("fetch", capsys)
    assert status == 1 and err.count("\n") == 1 and err.startswith(f"error: {error}"), err
    assert not (tmp_path / "data" / "raw").exists()
