"""Containers: the files records come in (JSON Lines, a JSON array, parquet; optionally gzip or
zstd), read as a stream of raw records. What a record means is chatmill.records' business.

Readers never raise on bad input: they yield a RawRecord with `error` set (and `file_error` when the
fault is the file's: unreadable, truncated), which the clean stage quarantines. Only an unknown
container (by file name) is an exception.
"""

import codecs
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from chatmill.errors import ChatmillError

TEXT_CHUNK = 1 << 16
# What may follow a decoded value when the chunk end cut a number ("12|3", "1.|5", "1e|5").
NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")
UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not utf-8, after errors="surrogateescape"
WHITESPACE = " \t\r\n\ufeff"
ARRAY_SEPARATORS = WHITESPACE + ","  # lenient: [a,,b,] reads a and b
STRUCTURE = re.compile(r'["{}\[\],]')
STRING_SPECIAL = re.compile(r'["\\]')
VALUE_FOLLOWER = re.compile(r"[ \t\r\n]*(?:[,\]]|\Z)")  # what may follow an array element
# What reading a file can raise: missing or unreadable, a truncated or corrupt gzip, zstd or parquet file.
READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError, pa.ArrowException)


@dataclass
class RawRecord:
    location: str  # "file:line" or "file:#index", for the quarantine entry
    value: Any = None
    raw: str | None = None
    error: str | None = None
    file_error: bool = False  # the fault is the file's (unreadable, truncated), not one record's
    unparsed: bool = False  # raw is a JSON text still to parse (iter_records(parse=False)); see parsed()


def parsed(record: RawRecord) -> RawRecord:
    """The record with its JSON text parsed into value, or an error record; a parsed one as it is.
    The clean stage reads with parse=False and parses in its worker processes: a line crosses the
    process boundary as one string, several times cheaper to pickle than the value it holds."""
    if not record.unparsed:
        return record
    try:
        return RawRecord(record.location, value=json.loads(record.raw), raw=record.raw)
    except (ValueError, RecursionError) as error:  # ValueError: also an integer of over 4300 digits
        return RawRecord(record.location, raw=record.raw, error=f"invalid json: {error}")


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


def _unreadable(error: BaseException) -> str:
    """The reason for a file that cannot be read, or not to its end; on one line (pyarrow's span several)."""
    return " ".join(f"unreadable file: {type(error).__name__}: {error}".split())


def _lines(stream: io.BufferedIOBase) -> Iterator[tuple[bytes, str | None]]:
    """The lines of a stream, as (line, None). Each ends in LF (CRLF and a lone CR become LF: no valid JSON
    text holds a raw CR) but the last may have no ending. A read fault (a truncated or corrupt compressed
    file) ends them with (the partial line read so far, the reason), so that what was read is not lost."""
    parts: list[bytes] = []  # the line being read, in pieces: a long line costs linear time
    carry = b""  # a \r at the end of a chunk, whose \n may start the next one
    while True:
        try:
            chunk = stream.read1(TEXT_CHUNK)
        except READ_ERRORS as error:
            yield b"".join(parts) + carry, _unreadable(error)
            return
        data, carry = carry + chunk, b""
        if chunk and data.endswith(b"\r"):
            data, carry = data[:-1], b"\r"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *complete, rest = data.split(b"\n")
        for line in complete:
            parts += (line, b"\n")
            yield b"".join(parts), None
            parts = []
        parts.append(rest)
        if not chunk:
            break
    if any(parts):
        yield b"".join(parts), None


def _jsonl_records(path: Path, stream: io.BufferedIOBase, parse: bool) -> Iterator[RawRecord]:
    for number, (line, fault) in enumerate(_lines(stream), start=1):
        if fault is not None:
            partial = line.decode("utf-8", "replace").strip()
            yield RawRecord(path.name, raw=partial or None, error=fault, file_error=True)
            return
        location = f"{path.name}:{number}"
        try:
            text = line.decode("utf-8").lstrip("\ufeff").strip()
        except UnicodeDecodeError as error:
            yield RawRecord(
                location, raw=line.decode("utf-8", "replace"), error=f"invalid utf-8: {error.reason}"
            )
            continue
        if text:
            record = RawRecord(location, raw=text, unparsed=True)
            yield parsed(record) if parse else record


def _visible(text: str) -> str:
    """Text decoded with errors="surrogateescape", its undecodable bytes shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass
class _Scan:
    """How far the search for the end of a JSON value has gone: offset from the value's start, bracket
    depth, and whether it stopped inside a string."""

    offset: int = 0
    depth: int = 0
    in_string: bool = False


def _value_end(text: str, start: int, scan: _Scan) -> int | None:
    """Index of the ',' or ']' (outside strings and brackets) that ends the value at text[start:], or None
    when the text runs out first; `scan` keeps the state, so the search resumes where it stopped once more
    text has arrived. It checks nothing: a malformed value is found, quarantined alone, and reading goes on
    after it; a deeply nested one costs no recursion."""
    i = start + scan.offset
    while True:
        if scan.in_string:
            match = STRING_SPECIAL.search(text, i)
            if match is None:
                i = len(text)
                break
            if match.group() == '"':
                i, scan.in_string = match.end(), False
            elif match.end() < len(text):
                i = match.end() + 1  # an escaped character
            else:
                i = match.start()  # the escaped character has not arrived yet
                break
            continue
        match = STRUCTURE.search(text, i)
        if match is None:
            i = len(text)
            break
        char, i = match.group(), match.end()
        if char == '"':
            scan.in_string = True
        elif char in "{[":
            scan.depth += 1
        elif char in "}]" and scan.depth > 0:
            scan.depth -= 1
        elif char in ",]" and scan.depth == 0:
            return match.start()
        # otherwise a ',' inside brackets, or a stray '}': part of this (malformed) value
    scan.offset = i - start
    return None


def _json_array_records(path: Path, stream: io.BufferedIOBase) -> Iterator[RawRecord]:
    """Stream the elements of a top-level JSON array (or of several arrays one after the other) without
    loading the whole file. A malformed element is an error record of its own text and the elements
    after it are read as usual; text outside the arrays is quarantined, not ignored."""
    decoder = json.JSONDecoder()
    # surrogateescape: a bad byte spoils only the element it is in (quarantined), not the chunk around it
    text_of = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    buffer, position, index, in_array = "", 0, 0, False
    fault: str | None = None
    ended = False

    def more() -> bool:
        """Append the next text to the unread part; False at the end of the file or at a read fault (the
        text read before it is kept). Each read is at least as long as the unread part, so a value much
        larger than a chunk is read and scanned in linear time, not quadratic."""
        nonlocal buffer, position, fault, ended
        wanted, pieces = max(TEXT_CHUNK, len(buffer) - position), []
        while not ended and (wanted > 0 or not any(pieces)):  # part of a character decodes to ""
            try:
                data = stream.read1(max(wanted, 1))
            except READ_ERRORS as error:
                fault, data = _unreadable(error), b""
            ended = not data
            pieces.append(text_of.decode(data, final=ended))
            wanted -= len(data)
        chunk = "".join(pieces)
        buffer, position = buffer[position:] + chunk, 0
        return bool(chunk)

    def through_end() -> int | None:
        """Read on until the value at `position` is complete; the index of the ',' or ']' after it."""
        scan = _Scan()
        while (end := _value_end(buffer, position, scan)) is None:
            if not more():
                return None
        return end

    while True:
        skip = ARRAY_SEPARATORS if in_array else WHITESPACE
        while position < len(buffer) and buffer[position] in skip:
            position += 1
        if position == len(buffer):
            if more():
                continue
            break
        char = buffer[position]
        if char == "[" and not in_array:
            in_array, position = True, position + 1
            continue
        if char == "]" and in_array:
            in_array, position = False, position + 1
            continue
        location = f"{path.name}:#{index}"
        if not in_array:  # after the array: quarantine up to the next ',' or ']' (inclusive), then go on
            end = through_end()
            stop = len(buffer) if end is None else end + 1
            raw = _visible(buffer[position:stop].strip())
            yield RawRecord(location, raw=raw, error="invalid json: text after the end of the array")
            index, position = index + 1, stop
            continue
        value, error = None, None
        try:
            value, end = decoder.raw_decode(buffer, position)
            if not VALUE_FOLLOWER.match(buffer, end):  # "{...}}" or a missing comma: malformed
                end = None
        except (ValueError, RecursionError):  # malformed, or not complete in the buffer yet
            end = None
        if end is not None:
            if type(value) in (int, float) and NUMBER_TAIL.fullmatch(buffer, end) and more():
                continue  # the number may go on in the text just read: decode it again
            text = buffer[position:end]
        else:  # the slow path: find where the element ends, then decode it alone
            end = through_end()
            if end is None:
                break  # the file ends inside this element
            text = buffer[position:end].strip()
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as decode_error:  # ValueError: also a 4300+ digit integer
                error = f"invalid json: {decode_error}"
        if UNDECODABLE.search(text):
            yield RawRecord(location, raw=_visible(text), error="invalid utf-8")
        elif error is not None:
            yield RawRecord(location, raw=text, error=error)
        else:
            yield RawRecord(location, value=value, raw=text)
        index, position = index + 1, end
    rest = _visible(buffer[position:].strip()) or None
    if fault is not None:
        yield RawRecord(path.name, raw=rest, error=fault, file_error=True)
    elif in_array:  # a truncated file, like a truncated gzip stream: the file's fault
        error = "invalid json: array is not closed (truncated file?)"
        yield RawRecord(path.name, raw=rest, error=error, file_error=True)


def _starts_an_array(path: Path) -> bool:
    """Whether a .json file's first character (after any BOM and whitespace) is '['. Anything else is read
    as JSON Lines, as the Hugging Face loaders do: many .json files on the Hub hold one object per line."""
    with _open_binary(path) as stream:
        while chunk := stream.read1(TEXT_CHUNK):  # read1: a truncated .gz file still shows its start
            chunk = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")
            if chunk:
                return chunk.startswith(b"[")
    return False


def _parquet_records(path: Path) -> Iterator[RawRecord]:
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield RawRecord(f"{path.name}:#{index}", value=row)
            index += 1


def iter_records(path: Path, parse: bool = True) -> Iterator[RawRecord]:
    """Every record of one source file, in file order. A corrupt or truncated file ends with an error
    record (file_error=True) instead of an exception, so what was read before the fault is kept.
    An unknown container (by the file name) is a ChatmillError. parse=False leaves the lines of a JSON
    Lines file unparsed, for parsed() to parse later."""
    path = Path(path)
    kind = _container_kind(path)
    try:
        if kind == "parquet":
            yield from _parquet_records(path)
            return
        if kind == "json" and not _starts_an_array(path):
            kind = "jsonl"
        with _open_binary(path) as stream:
            if kind == "jsonl":
                yield from _jsonl_records(path, stream, parse)
            else:
                yield from _json_array_records(path, stream)
    except READ_ERRORS as error:
        yield RawRecord(path.name, error=_unreadable(error), file_error=True)
