"""Source containers (jsonl, JSON array, parquet; gzip and zstd): chatmill.containers. The record
formats are test_records'.

The readers' contract: every record in file order, and a bad record or a truncated/corrupt file becomes
an error record (with the raw text where there is one), never an exception.
"""

import datetime
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import chatmill.containers as containers
from chatmill.containers import iter_records, parsed
from chatmill.errors import ChatmillError

JSONL = b'{"n": 1}\n{"n": 2}\n{"n": 3}\n'


def write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def values(path: Path) -> list:
    records = list(iter_records(path))
    assert [r.error for r in records] == [None] * len(records)
    return [r.value for r in records]


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def lines_of(count: int) -> bytes:
    return b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 40) for i in range(count))


# ---------------------------------------------------------------- jsonl


def test_jsonl_skips_blank_lines_and_handles_bom_and_crlf(tmp_path):
    path = write(tmp_path / "a.jsonl", b'\xef\xbb\xbf{"n": 1}\r\n\r\n   \n{"n": 2}\r\n{"n": 3}')
    records = list(iter_records(path))
    assert [r.value for r in records] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [r.location for r in records] == ["a.jsonl:1", "a.jsonl:4", "a.jsonl:5"]
    assert [r.raw for r in records] == ['{"n": 1}', '{"n": 2}', '{"n": 3}']
    assert all(r.error is None for r in records)


def test_jsonl_keeps_a_json_string_holding_a_line_separator(tmp_path):
    path = write(tmp_path / "a.ndjson", '{"text": "one\u2028two"}\n'.encode())
    assert values(path) == [{"text": "one\u2028two"}]


def test_jsonl_bad_lines_become_error_records_and_reading_goes_on(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"n": 1}\n{"text": "caf\xe9"}\n{"n": \n{"n": 4}\n')
    good1, bad_utf8, bad_json, good4 = iter_records(path)
    assert (good1.value, good4.value, good4.location) == ({"n": 1}, {"n": 4}, "a.jsonl:4")
    assert bad_utf8.location == "a.jsonl:2"
    assert bad_utf8.error.startswith("invalid utf-8")
    assert bad_utf8.raw.startswith('{"text": "caf\ufffd"}')  # kept, with the bad byte made visible
    assert bad_json.location == "a.jsonl:3"
    assert bad_json.error.startswith("invalid json")
    assert bad_json.raw == '{"n":'
    assert bad_json.value is None


def test_jsonl_lines_left_unparsed_parse_later_into_the_same_records(tmp_path):
    """The clean stage reads with parse=False and parses in its workers: the same records, errors too."""
    path = write(tmp_path / "a.jsonl", b'{"n": 1}\n{"text": "caf\xe9"}\n{"n": \n[1, 2]\n')
    unparsed = list(iter_records(path, parse=False))
    assert [r.value for r in unparsed] == [None] * 4
    assert [parsed(r) for r in unparsed] == list(iter_records(path))


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 16])
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_jsonl_line_endings_at_any_chunk_size(tmp_path, monkeypatch, chunk, end):
    """LF, CRLF (even split across two reads) or a lone CR: no valid JSON text holds a raw CR."""
    monkeypatch.setattr(containers, "TEXT_CHUNK", chunk)
    path = write(tmp_path / "a.jsonl", end.join([b'{"n": 1}', b'{"n": 2}', b"", b'{"n": 3}']) + end)
    records = list(iter_records(path))
    assert [(r.location, r.value) for r in records] == [
        ("a.jsonl:1", {"n": 1}),
        ("a.jsonl:2", {"n": 2}),
        ("a.jsonl:4", {"n": 3}),
    ]


def test_jsonl_integer_of_5000_digits_is_an_error_record_not_a_crash(tmp_path):
    bad, good = iter_records(write(tmp_path / "a.jsonl", b'{"n": ' + b"1" * 5000 + b'}\n{"n": 2}\n'))
    assert bad.error.startswith("invalid json: Exceeds the limit (4300 digits)") and bad.raw.startswith(
        '{"n": 111'
    )
    assert good.value == {"n": 2}


def test_truncated_gzip_keeps_the_partial_last_line_as_raw(tmp_path):
    numbers = " ".join(str(i * 7919 % 10007) for i in range(1000)).encode()  # compresses poorly
    last = b'{"n": 3, "text": "' + numbers + b'"}\n'
    data = gzip.compress(JSONL) + gzip.compress(last)[:-30]
    *good, fault = iter_records(write(tmp_path / "a.jsonl.gz", data))
    assert [r.value for r in good] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert (fault.location, fault.file_error) == ("a.jsonl.gz", True)
    assert fault.error.startswith("unreadable file: EOFError")
    assert len(fault.raw) > 1000 and last.decode().startswith(fault.raw)


# ---------------------------------------------------------------- JSON arrays


ARRAY = """\ufeff[
  {"bot_name": "Ann", "text": "brackets ] and , commas, \\"quotes\\" and \u00e9\u00e8 \U0001f600"},
  {"nested": {"list": [1, 2.5e-3, -7, true, null, "]"]}},
  1.25, -3e5, 12345678901234567890, true, false, null, "plain string", [],
  {"last": "one"}
]
"""


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_json_array_elements_parse_the_same_at_any_chunk_size(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(containers, "TEXT_CHUNK", chunk)
    records = list(iter_records(write(tmp_path / "a.json", ARRAY)))
    assert [r.value for r in records] == json.loads(ARRAY.lstrip("\ufeff"))
    assert [r.location for r in records] == [f"a.json:#{i}" for i in range(len(records))]
    assert all(r.error is None and json.loads(r.raw) == r.value for r in records)
    assert records[0].raw.startswith('{"bot_name": "Ann"') and records[0].raw.endswith("}")


def test_json_array_element_larger_than_the_read_chunk(tmp_path):
    elements = [{"i": i, "text": "w\u00f6rd " * 9000} for i in range(3)]  # each ~54 K chars, > 64 KiB in all
    path = write(tmp_path / "big.json", json.dumps(elements, ensure_ascii=False))
    assert values(path) == elements


@pytest.mark.parametrize("text", ["[]", "  [ ]\n", "\ufeff[\r\n]\r\n"])
def test_empty_json_array_has_no_records(tmp_path, text):
    assert list(iter_records(write(tmp_path / "a.json", text))) == []


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_unclosed_json_array_keeps_the_elements_before_the_cut(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(containers, "TEXT_CHUNK", chunk)
    *good, error = iter_records(write(tmp_path / "a.json", '[{"n": 1}, {"n": 2},\n'))
    assert [r.value for r in good] == [{"n": 1}, {"n": 2}]
    assert (error.location, error.raw, error.file_error) == ("a.json", None, True)
    assert error.error == "invalid json: array is not closed (truncated file?)"


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_json_array_cut_inside_an_element_keeps_that_partial_element_as_raw(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(containers, "TEXT_CHUNK", chunk)
    good, error = iter_records(write(tmp_path / "a.json", '[{"n": 1}, {"n": 2, "text": "cut he'))
    assert good.value == {"n": 1}
    assert (error.location, error.file_error) == ("a.json", True)
    assert error.error == "invalid json: array is not closed (truncated file?)"
    assert error.raw == '{"n": 2, "text": "cut he'


@pytest.mark.parametrize("chunk", [3, 1 << 16])
def test_invalid_element_in_a_json_array_is_quarantined_alone(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(containers, "TEXT_CHUNK", chunk)
    text = '[{"n": 1}, {"n": nope, "s": "a, ] \\" }"}, {"n": 2}}, {"n": 3}]'
    good, bad, extra_brace, last = iter_records(write(tmp_path / "a.json", text))
    assert (good.value, last.value, last.location) == ({"n": 1}, {"n": 3}, "a.json:#3")
    assert bad.error.startswith("invalid json: Expecting value")
    assert bad.raw == '{"n": nope, "s": "a, ] \\" }"}'
    assert extra_brace.error.startswith("invalid json: Extra data") and extra_brace.raw == '{"n": 2}}'


def test_json_array_element_too_deep_or_with_a_huge_integer_is_quarantined_alone(tmp_path):
    deep, huge = "[" * 100_000 + "]" * 100_000, '{"n": ' + "1" * 5000 + "}"
    records = list(iter_records(write(tmp_path / "a.json", f'[{deep}, {huge}, {{"n": 3}}]')))
    assert [r.error.split(":")[0] if r.error else r.value for r in records] == [
        "invalid json",
        "invalid json",
        {"n": 3},
    ]
    assert "recursion" in records[0].error and records[0].raw == deep
    assert "4300 digits" in records[1].error and records[1].raw == huge


@pytest.mark.parametrize("chunk", [5, 1 << 16])
def test_json_element_larger_than_many_chunks_is_read_in_linear_time(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(containers, "TEXT_CHUNK", chunk)
    text = json.dumps([{"n": 1, "text": 'a \\ " b ' * 200_000}, {"n": 2}])  # 2 MB, escapes throughout
    reads = []
    open_binary = containers._open_binary

    def counting_open(path):
        stream = open_binary(path)
        read1 = stream.read1
        stream.read1 = lambda size: reads.append(size) or read1(size)
        return stream

    monkeypatch.setattr(containers, "_open_binary", counting_open)
    assert values(write(tmp_path / "a.json", text)) == json.loads(text)
    # each read as long as the text not yet used: a logarithmic number of reads, each scanned once
    assert 0 < len(reads) < 40, len(reads)


def test_concatenated_json_arrays_are_all_read(tmp_path):
    assert values(write(tmp_path / "a.json", '[{"n": 1}]\n[{"n": 2}, {"n": 3}]\n[]')) == [
        {"n": 1},
        {"n": 2},
        {"n": 3},
    ]


def test_text_after_the_array_is_quarantined_not_ignored(tmp_path):
    *good, junk1, junk2 = iter_records(write(tmp_path / "a.json", '[{"n": 1}, {"n": 2}] oops, {"n": 3}'))
    assert [r.value for r in good] == [{"n": 1}, {"n": 2}]
    assert [(r.location, r.raw) for r in (junk1, junk2)] == [
        ("a.json:#2", "oops,"),
        ("a.json:#3", '{"n": 3}'),
    ]
    assert junk1.error == junk2.error == "invalid json: text after the end of the array"


@pytest.mark.parametrize("text", ['{"n": 1}\n{"n": 2}\n', '\ufeff  {"n": 1}\r\n\r\n{"n": 2}'])
def test_json_file_that_holds_json_lines_is_read_as_lines(tmp_path, text):
    records = list(iter_records(write(tmp_path / "a.json", text)))
    assert [r.value for r in records] == [{"n": 1}, {"n": 2}]
    assert [r.location for r in records] == (
        ["a.json:1", "a.json:2"] if "\r" not in text else ["a.json:1", "a.json:3"]
    )


@pytest.mark.parametrize(
    ("text", "value", "error"),
    [
        ('{"n": 1}', {"n": 1}, None),
        ('"just a string"', "just a string", None),
        ("\n  42", 42, None),
        (",[]", None, "invalid json: Expecting value"),
    ],
)
def test_json_top_level_that_is_not_an_array_is_a_json_line(tmp_path, text, value, error):
    [record] = iter_records(write(tmp_path / "a.json", text))
    assert record.value == value
    assert (record.error or "").startswith(error or "")


def test_deeply_nested_json_is_an_error_record_not_a_crash(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    [array_error] = iter_records(write(tmp_path / "a.json", f"[{deep}]"))
    [line_error] = iter_records(write(tmp_path / "a.jsonl", deep + "\n"))
    assert array_error.error.startswith("invalid json") and line_error.error.startswith("invalid json")


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_invalid_utf8_in_a_json_array_spoils_only_its_element(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(containers, "TEXT_CHUNK", chunk)
    path = write(tmp_path / "a.json", b'[{"n": 1}, {"text": "caf\xe9 \xc3\xa9"}, {"n": 3}]')
    first, bad, last = iter_records(path)
    assert (first.value, last.value, last.location) == ({"n": 1}, {"n": 3}, "a.json:#2")
    assert bad.location == "a.json:#1"
    assert bad.error.startswith("invalid utf-8")
    assert bad.value is None
    assert bad.raw == '{"text": "caf\ufffd \u00e9"}'


def test_invalid_utf8_outside_a_string_keeps_a_writable_raw(tmp_path):
    good, bad, last = iter_records(write(tmp_path / "a.json", b'[{"n": 1}, {"n": 2\xff}, {"n": 3}]'))
    assert (good.value, last.value) == ({"n": 1}, {"n": 3})
    assert bad.error == "invalid utf-8"
    assert bad.raw == '{"n": 2\ufffd}'
    bad.raw.encode("utf-8")  # no lone surrogates left to break the quarantine file


# ---------------------------------------------------------------- parquet


def test_parquet_rows_with_nested_lists(tmp_path):
    rows = [
        {"bot_name": "Ann", "conversation": [{"message": "hi", "is_human": True}]},
        {"bot_name": "Bob", "conversation": []},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    records = list(iter_records(tmp_path / "a.parquet"))
    assert [r.value for r in records] == rows
    assert [r.location for r in records] == ["a.parquet:#0", "a.parquet:#1"]


def test_parquet_timestamps_come_through(tmp_path):
    stamp = datetime.datetime(2023, 3, 3, 12, 0)
    pq.write_table(pa.Table.from_pylist([{"t": stamp}]), tmp_path / "a.parquet")
    assert values(tmp_path / "a.parquet") == [{"t": stamp}]


@pytest.mark.parametrize("content", [b"PAR1 not really parquet", b""])
def test_corrupt_parquet_is_an_error_record(tmp_path, content):
    [record] = iter_records(write(tmp_path / "a.parquet", content))
    assert record.location == "a.parquet"
    assert record.error.startswith("unreadable file")


# ---------------------------------------------------------------- gzip and zstd


@pytest.mark.parametrize(("name", "compress"), [("a.jsonl.gz", gzip.compress), ("a.JSONL.ZST", zst)])
def test_compressed_jsonl(tmp_path, name, compress):
    records = list(iter_records(write(tmp_path / name, compress(JSONL))))
    assert [r.value for r in records] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert records[0].location == f"{name}:1"


@pytest.mark.parametrize(("name", "compress"), [("a.json.gz", gzip.compress), ("a.json.zst", zst)])
def test_compressed_json_array(tmp_path, name, compress):
    assert values(write(tmp_path / name, compress(b'[{"n": 1}, {"n": 2}]'))) == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("a.jsonl.zst", [b'{"n": 1}\n', b'{"n": 2}\n{"n": 3}\n', b""]),
        ("a.json.zst", [b'[{"n": 1}, {"n"', b': 2}, {"n": 3}', b"]"]),
    ],
)
def test_zstd_file_of_several_frames_is_read_to_the_end(tmp_path, name, parts):
    path = write(tmp_path / name, b"".join(zst(part) for part in parts))
    assert values(path) == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_zstd_streamed_without_content_size(tmp_path):
    chunks = zstandard.ZstdCompressor().compressobj()
    data = chunks.compress(lines_of(300)) + chunks.flush()
    assert len(values(write(tmp_path / "a.jsonl.zst", data))) == 300


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("a.jsonl.gz", lambda blocks: b"".join(gzip.compress(b) for b in blocks)),
        ("a.jsonl.zst", lambda blocks: b"".join(zst(b) for b in blocks)),
    ],
)
def test_truncated_compressed_file_yields_good_records_then_one_error(tmp_path, name, frames):
    data = frames([lines_of(500), lines_of(500)])
    path = write(tmp_path / name, data[: len(data) - 200])
    *good, error = iter_records(path)
    assert len(good) >= 500
    assert [r.value["n"] for r in good] == [i % 500 for i in range(len(good))]
    assert all(r.error is None for r in good)
    assert error.location == name
    assert error.error.startswith("unreadable file: EOFError")


@pytest.mark.parametrize("name", ["a.jsonl.gz", "a.jsonl.zst", "a.json.gz"])
def test_file_that_is_not_compressed_as_named_is_an_error_record(tmp_path, name):
    [record] = iter_records(write(tmp_path / name, JSONL))
    assert record.error.startswith("unreadable file")


@pytest.mark.parametrize("name", ["a.csv", "a.txt.gz", "a.jsonl.bz2", "jsonl"])
def test_unknown_container_is_a_chatmill_error(tmp_path, name):
    path = write(tmp_path / name, JSONL)
    with pytest.raises(ChatmillError, match="unknown container"):
        list(iter_records(path))
