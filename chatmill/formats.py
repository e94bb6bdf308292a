"""Reading source files: containers (jsonl, json array, parquet; gzip/zstd) and record formats
(pippa, sharegpt, openai, alpaca) into the canonical conversation parts.

Readers never raise on a bad record: containers yield a RawRecord with `error` set, and
`parse_record` raises RecordError, which the clean stage turns into a quarantine entry.
"""

import gzip
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from chatmill.errors import ChatmillError
from chatmill.schema import USER_NAME, Turn

ASSISTANT_NAME = "Assistant"
ASSISTANT_PERSONA = (
    "A helpful, knowledgeable assistant who follows instructions carefully and answers in full."
)
TEXT_CHUNK = 1 << 16
# What may follow a decoded value when the chunk end cut a number ("12|3", "1.|5", "1e|5").
NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")
UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not utf-8, after errors="surrogateescape"


class RecordError(ValueError):
    """A record that cannot become a conversation; the message is its quarantine reason."""


@dataclass
class RawRecord:
    location: str  # "file:line" or "file:#index", for the quarantine entry
    value: Any = None
    raw: str | None = None
    error: str | None = None


@dataclass
class ParsedRecord:
    bot_name: str
    persona: str
    scenario: str
    turns: list[Turn]
    meta: dict[str, Any]


# ---------------------------------------------------------------- containers


class _ZstdReader(io.RawIOBase):
    """Every frame of a .zst file in turn, raising EOFError (as gzip does) when the file ends inside a
    frame. zstandard's own stream_reader cannot be iterated by line (io.UnsupportedOperation) and
    returns a truncated frame's data without complaint."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame: Any = None  # the frame being decoded; None between frames
        self._input, self._output, self._offset = b"", b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._offset == len(self._output):
            if not self._input:
                self._input = self._file.read(TEXT_CHUNK)
                if not self._input:
                    if self._frame is not None:
                        raise EOFError("compressed file ended before the end of a zstd frame")
                    return 0
            if self._frame is None:
                self._frame = self._decompressor.decompressobj()
            self._output, self._offset = self._frame.decompress(self._input), 0
            self._input = b""
            if self._frame.eof:
                self._input, self._frame = self._frame.unused_data, None
        size = min(len(buffer), len(self._output) - self._offset)
        buffer[:size] = self._output[self._offset : self._offset + size]
        self._offset += size
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(path))
    return open(path, "rb")


def _container_kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz").removesuffix(".zst")
    for suffix, kind in (
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "json"),
        (".parquet", "parquet"),
    ):
        if name.endswith(suffix):
            return kind
    raise ChatmillError(
        f"{path}: unknown container (expected .jsonl, .json or .parquet, optionally .gz or .zst)"
    )


def _jsonl_records(path: Path, stream: io.BufferedIOBase) -> Iterator[RawRecord]:
    for number, line in enumerate(stream, start=1):
        location = f"{path.name}:{number}"
        try:
            text = line.decode("utf-8").lstrip("\ufeff").strip()
        except UnicodeDecodeError as error:
            yield RawRecord(
                location, raw=line.decode("utf-8", "replace"), error=f"invalid utf-8: {error.reason}"
            )
            continue
        if not text:
            continue
        try:
            yield RawRecord(location, value=json.loads(text), raw=text)
        except (json.JSONDecodeError, RecursionError) as error:
            yield RawRecord(location, raw=text, error=f"invalid json: {error}")


def _visible(text: str) -> str:
    """Text decoded with errors="surrogateescape", its undecodable bytes shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _json_array_records(path: Path, stream: io.BufferedIOBase) -> Iterator[RawRecord]:
    """Stream the elements of a top-level JSON array without loading the whole file."""
    decoder = json.JSONDecoder()
    # surrogateescape: a bad byte spoils only the element it is in (quarantined), not the chunk around it
    reader = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape")
    buffer, position, index, started, finished = "", 0, 0, False, False

    def refill() -> bool:
        nonlocal buffer, position
        chunk = reader.read(TEXT_CHUNK)
        buffer = buffer[position:] + chunk
        position = 0
        return bool(chunk)

    while not finished:
        while position < len(buffer) and buffer[position] in " \t\r\n,\ufeff":
            if buffer[position] == "," and not started:
                break
            position += 1
        if position >= len(buffer):
            if not refill():
                break
            continue
        char = buffer[position]
        if not started:
            if char != "[":
                yield RawRecord(f"{path.name}", error="invalid json: top level is not an array")
                return
            started, position = True, position + 1
            continue
        if char == "]":
            finished = True
            break
        try:
            value, end = decoder.raw_decode(buffer, position)
        except (json.JSONDecodeError, RecursionError) as error:
            if refill():  # the element may continue in the next chunk
                continue
            rest = _visible(buffer[position:])
            yield RawRecord(f"{path.name}:#{index}", raw=rest, error=f"invalid json: {error}")
            return
        if NUMBER_TAIL.fullmatch(buffer, end) and refill():  # a number may continue in the next chunk
            continue
        raw = buffer[position:end]
        if UNDECODABLE.search(raw):
            yield RawRecord(f"{path.name}:#{index}", raw=_visible(raw), error="invalid utf-8")
        else:
            yield RawRecord(f"{path.name}:#{index}", value=value, raw=raw)
        index, position = index + 1, end
    if not finished:
        yield RawRecord(f"{path.name}:#{index}", error="invalid json: array is not closed (truncated file?)")


def _parquet_records(path: Path) -> Iterator[RawRecord]:
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield RawRecord(f"{path.name}:#{index}", value=row)
            index += 1


def iter_records(path: Path) -> Iterator[RawRecord]:
    """Every record of one source file, in file order. A corrupt or truncated file ends with an
    error record instead of an exception, so what was read before the fault is kept."""
    path = Path(path)
    kind = _container_kind(path)
    try:
        if kind == "parquet":
            yield from _parquet_records(path)
            return
        with _open_binary(path) as stream:
            if kind == "jsonl":
                yield from _jsonl_records(path, stream)
            else:
                yield from _json_array_records(path, stream)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError, pa.ArrowException) as error:
        yield RawRecord(f"{path.name}", error=f"unreadable file: {type(error).__name__}: {error}")


# ---------------------------------------------------------------- record formats


def _field(record: Any, key: str, kind: type, default: Any = None) -> Any:
    if not isinstance(record, dict):
        raise RecordError(f"record is {type(record).__name__}, expected an object")
    if key not in record or record[key] is None:
        if default is not None:
            return default
        raise RecordError(f"missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind):
        raise RecordError(f"field '{key}' is {type(value).__name__}, expected {kind.__name__}")
    return value


def _turn(role: str, name: str, text: Any, where: str) -> Turn:
    if not isinstance(text, str):
        raise RecordError(f"{where} is {type(text).__name__}, expected str")
    return Turn(role=role, name=name, text=text)


def parse_pippa(record: Any) -> ParsedRecord:
    bot_name = _field(record, "bot_name", str)
    messages = _field(record, "conversation", list)
    turns = []
    for i, message in enumerate(messages):
        is_human = _field(message, "is_human", bool)
        turns.append(
            _turn(
                "user" if is_human else "bot",
                USER_NAME if is_human else bot_name,
                _field(message, "message", str),
                f"conversation[{i}].message",
            )
        )
    meta = {
        key: record.get(key)
        for key in ("bot_definitions", "bot_greeting", "categories", "submission_timestamp")
        if record.get(key) is not None
    }
    return ParsedRecord(bot_name, _field(record, "bot_description", str, ""), "", turns, meta)


def _chat_messages(messages: list, role_key: str, text_key: str, roles: dict[str, str], bot_name: str):
    """Shared by sharegpt and openai: a leading system message becomes the persona."""
    persona, turns = "", []
    for i, message in enumerate(messages):
        role = roles.get(_field(message, role_key, str))
        if role is None:
            raise RecordError(
                f"messages[{i}].{role_key} is {message[role_key]!r}, expected one of {sorted(roles)}"
            )
        text = _field(message, text_key, str)
        if role == "system" and not turns and not persona:
            persona = text
            continue
        name = {"user": USER_NAME, "bot": bot_name, "system": "system"}[role]
        turns.append(_turn(role, name, text, f"messages[{i}].{text_key}"))
    return persona, turns


def parse_sharegpt(record: Any) -> ParsedRecord:
    bot_name = _field(record, "bot_name", str, ASSISTANT_NAME)
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "bot",
        "assistant": "bot",
        "chatgpt": "bot",
        "system": "system",
    }
    persona, turns = _chat_messages(_field(record, "conversations", list), "from", "value", roles, bot_name)
    persona = _field(record, "persona", str, "") or persona
    meta = {"origin_id": record["id"]} if isinstance(record.get("id"), (str, int)) else {}
    return ParsedRecord(bot_name, persona, _field(record, "scenario", str, ""), turns, meta)


def parse_openai(record: Any) -> ParsedRecord:
    roles = {"user": "user", "assistant": "bot", "system": "system"}
    persona, turns = _chat_messages(
        _field(record, "messages", list), "role", "content", roles, ASSISTANT_NAME
    )
    return ParsedRecord(ASSISTANT_NAME, persona, "", turns, {})


def parse_alpaca(record: Any) -> ParsedRecord:
    instruction = _field(record, "instruction", str)
    extra_input = _field(record, "input", str, "")
    prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    turns = [
        _turn("user", USER_NAME, prompt, "instruction"),
        _turn("bot", ASSISTANT_NAME, _field(record, "output", str), "output"),
    ]
    return ParsedRecord(ASSISTANT_NAME, ASSISTANT_PERSONA, "", turns, {})


PARSERS: dict[str, Callable[[Any], ParsedRecord]] = {
    "pippa": parse_pippa,
    "sharegpt": parse_sharegpt,
    "openai": parse_openai,
    "alpaca": parse_alpaca,
}


def parser_for(format_name: str, source: str) -> Callable[[Any], ParsedRecord]:
    if format_name not in PARSERS:
        raise ChatmillError(
            f"params.yaml: sources.{source}.format is {format_name!r}; known formats: {', '.join(PARSERS)}"
        )
    return PARSERS[format_name]
