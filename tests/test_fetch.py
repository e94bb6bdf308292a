"""The fetch stage (chatmill.fetch, run through stages/fetch.py) and the sources section (chatmill.sources):
local copies, HTTP downloads and Hub files, all offline.

HTTP and the Hub are a stand-in server on 127.0.0.1. The hf:// tests run the real huggingface_hub client
against it: it serves HEAD/GET on /datasets/{repo}/resolve/{revision}/{path} with the headers the client
requires (X-Repo-Commit, ETag, Content-Length; X-Error-Code on a 404).
"""

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import run_stage, write_workspace
from huggingface_hub import constants

import chatmill.fetch as fetch
from chatmill.errors import ChatmillError
from chatmill.sources import HttpUrl, HubFile, LocalPath, parse_uri, validate_sources

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_token_never_printed"
LOGS = (
    b'{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]}\n' * 50
)


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# ---------------------------------------------------------------- a stand-in for web servers and the Hub


class StandIn(BaseHTTPRequestHandler):
    """Serves `server.files` by path. Paths in `server.truncated` send their length but only half the body."""

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def _respond(self, with_body: bool) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization")))
        content = self.server.files.get(self.path)
        if content is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")  # how the Hub says "no such file"
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", f'"{sha256(content)}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if with_body:
            # HTTP/1.0: returning closes the connection, so a short body is a download cut off midway.
            self.wfile.write(content[: len(content) // 2] if self.path in self.server.truncated else content)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    httpd.files, httpd.truncated, httpd.requests = {}, set(), []
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ThreadingHTTPServer:
    """Point the real huggingface_hub client at the stand-in, with a private cache and a token."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # Telemetry would also GET /api/agent-harnesses and cache it under ~/.cache/huggingface.
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub reads these environment variables once, at import: set what it derived from them too.
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return server


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def source(uri: str, **overrides: object) -> dict:
    return {"uri": uri, "format": "sharegpt", "trim": True, "weight": 1.0, **overrides}


def run_fetch(sources: dict, capsys: pytest.CaptureFixture, **uris: str) -> tuple[int, str, str]:
    """Run stages/fetch.py with these sources in ./params.yaml (and its dvc.yaml); return (exit status,
    stdout, stderr). `uris` (source name: uri) are put into params.yaml after dvc.yaml is written: uris
    that writing dvc.yaml would reject, for the stage to reject."""
    write_workspace(Path.cwd(), {"sources": sources}, replace=True)
    if uris:
        params = yaml.safe_load(Path("params.yaml").read_text())
        for name, uri in uris.items():
            params["sources"][name]["uri"] = uri
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        run_stage("fetch")
        status = 0
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def manifest() -> dict:
    return json.loads(Path("data/raw/manifest.json").read_text())


# ---------------------------------------------------------------- local files


def test_local_sources_are_copied_with_a_manifest(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    Path("data/sources").mkdir(parents=True)
    Path("data/sources/fresh.jsonl").write_bytes(LOGS)
    Path("data/sources/tasks.json").write_bytes(b"[]")
    sources = {
        "fresh_logs": source("data/sources/fresh.jsonl", sha256=sha256(LOGS).upper()),
        "instructions": source("data/sources/tasks.json", format="alpaca", trim=False, weight=0),
    }

    status, out, err = run_fetch(sources, capsys)

    assert (status, err) == (0, "")
    assert Path("data/raw/fresh_logs/fresh.jsonl").read_bytes() == LOGS
    assert Path("data/raw/instructions/tasks.json").read_bytes() == b"[]"
    assert manifest() == {
        "fresh_logs": {
            "uri": "data/sources/fresh.jsonl",
            "file": "fresh_logs/fresh.jsonl",
            "bytes": len(LOGS),
            "sha256": sha256(LOGS),
        },
        "instructions": {
            "uri": "data/sources/tasks.json",
            "file": "instructions/tasks.json",
            "bytes": 2,
            "sha256": sha256(b"[]"),
        },
    }
    assert sorted(p.name for p in Path("data").iterdir()) == ["raw", "sources"]  # no temporary left behind
    assert "fresh_logs: data/raw/fresh_logs/fresh.jsonl" in out


def test_missing_local_file_is_a_one_line_error(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    status, out, err = run_fetch({"x": source("data/sources/foo.jsonl")}, capsys)

    assert status == 1
    assert err == (
        "error: fetch: source 'x': data/sources/foo.jsonl not found (check sources.x.uri in params.yaml)\n"
    )
    assert not Path("data/raw").exists()


# ---------------------------------------------------------------- http(s)


def test_http_download_is_verified(
    workdir: Path, server: ThreadingHTTPServer, capsys: pytest.CaptureFixture
) -> None:
    server.files["/dumps/logs%202023.jsonl"] = LOGS
    uri = f"{server.url}/dumps/logs%202023.jsonl"

    status, out, err = run_fetch({"web": source(uri, sha256=sha256(LOGS))}, capsys)

    assert (status, err) == (0, "")
    assert Path("data/raw/web/logs 2023.jsonl").read_bytes() == LOGS
    assert manifest()["web"] == {
        "uri": uri,
        "file": "web/logs 2023.jsonl",
        "bytes": len(LOGS),
        "sha256": sha256(LOGS),
    }


def test_sha256_mismatch_keeps_nothing_of_the_run(
    workdir: Path, server: ThreadingHTTPServer, capsys: pytest.CaptureFixture
) -> None:
    server.files["/logs.jsonl"] = LOGS
    wrong = "0" * 64
    previous = Path("data/raw/old/kept.jsonl")
    previous.parent.mkdir(parents=True)
    previous.write_text("from the last good run")

    status, out, err = run_fetch({"web": source(f"{server.url}/logs.jsonl", sha256=wrong)}, capsys)

    assert status == 1
    assert err.startswith(
        f"error: fetch: source 'web': sha256 mismatch: expected {wrong}, got {sha256(LOGS)}"
    )
    assert err.count("\n") == 1
    assert not Path("data/raw/web").exists()
    assert previous.read_text() == "from the last good run"  # the old output stands until a run succeeds
    assert [p.name for p in Path("data").iterdir()] == ["raw"]


def test_http_404_is_a_one_line_error(
    workdir: Path, server: ThreadingHTTPServer, capsys: pytest.CaptureFixture
) -> None:
    status, out, err = run_fetch({"web": source(f"{server.url}/gone.jsonl")}, capsys)

    assert status == 1
    assert err == f"error: fetch: source 'web': GET {server.url}/gone.jsonl failed: HTTP 404 Not Found\n"
    assert not Path("data/raw").exists()


def test_unreachable_server_is_a_one_line_error(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    status, out, err = run_fetch({"web": source("http://127.0.0.1:9/logs.jsonl")}, capsys)  # port 9: discard

    assert status == 1
    assert err.startswith("error: fetch: source 'web': cannot reach http://127.0.0.1:9/logs.jsonl: ")
    assert err.count("\n") == 1


def test_connection_dropped_midway_leaves_no_partial_file(
    tmp_path: Path, server: ThreadingHTTPServer
) -> None:
    server.files["/big.jsonl"] = LOGS
    server.truncated.add("/big.jsonl")
    destination = tmp_path / "big.jsonl"

    with pytest.raises(
        ChatmillError, match=rf"stopped after {len(LOGS) // 2} of {len(LOGS)} bytes; run again"
    ):
        fetch.download_url(f"{server.url}/big.jsonl", destination, None, "web")

    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the Hugging Face Hub


def test_hub_dataset_file_through_the_real_client(
    workdir: Path, hub: ThreadingHTTPServer, capsys: pytest.CaptureFixture
) -> None:
    hub.files["/datasets/acme/chats/resolve/v1.0/data/train.jsonl"] = LOGS
    uri = "hf://datasets/acme/chats@v1.0/data/train.jsonl"

    status, out, err = run_fetch({"hub": source(uri, sha256=sha256(LOGS))}, capsys)

    assert status == 0, err
    assert Path("data/raw/hub/train.jsonl").read_bytes() == LOGS
    assert not Path("data/raw/hub/train.jsonl").is_symlink()  # a copy, not a link into the cache
    assert manifest()["hub"] == {
        "uri": uri,
        "file": "hub/train.jsonl",
        "bytes": len(LOGS),
        "sha256": sha256(LOGS),
    }
    resolve = "/datasets/acme/chats/resolve/v1.0/data/train.jsonl"
    assert [(method, path) for method, path, _ in hub.requests] == [("HEAD", resolve), ("GET", resolve)]
    assert {auth for _, _, auth in hub.requests} == {f"Bearer {TOKEN}"}  # the client used HF_TOKEN ...
    assert TOKEN not in out + err + Path("data/raw/manifest.json").read_text()  # ... and nothing shows it


def test_hub_missing_file_is_a_one_line_error(
    workdir: Path, hub: ThreadingHTTPServer, capsys: pytest.CaptureFixture
) -> None:
    status, out, err = run_fetch({"hub": source("hf://datasets/acme/chats/nope.jsonl")}, capsys)

    assert status == 1
    assert err.startswith(
        "error: fetch: source 'hub': cannot download nope.jsonl from dataset acme/chats at revision main: 404"
    )
    assert err.count("\n") == 1
    assert TOKEN not in err
    assert not Path("data/raw").exists()


# ---------------------------------------------------------------- parsing uris and validating params


@pytest.mark.parametrize(
    ("uri", "location"),
    [
        ("data/sources/a.jsonl.gz", LocalPath("data/sources/a.jsonl.gz")),
        ("https://example.org/x/logs.parquet", HttpUrl("https://example.org/x/logs.parquet")),
        ("hf://datasets/PygmalionAI/PIPPA/pippa.jsonl", HubFile("PygmalionAI/PIPPA", "main", "pippa.jsonl")),
        ("hf://datasets/acme/chats@refs%2Fpr%2F3/a/b.json", HubFile("acme/chats", "refs/pr/3", "a/b.json")),
    ],
)
def test_parse_uri(uri: str, location: object) -> None:
    assert parse_uri(uri) == location


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "s3://bucket/logs.jsonl",
            "'s3://bucket/logs.jsonl' has unsupported scheme 's3'; use a repo-relative path",
        ),
        ("hf://models/acme/chats/a.json", "is not of the form hf://datasets/OWNER/NAME[@REV]/PATH"),
        ("https://example.org/", "'https://example.org/' does not end in a file name"),
    ],
)
def test_parse_uri_rejects(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_uri(uri)


def valid_sources() -> dict:
    return {
        "community_logs": source("data/sources/pippa.jsonl.gz", format="pippa", weight=0.7),
        "fresh_logs": source("data/sources/fresh.jsonl", weight=0.3),
    }


def test_validate_sources_returns_the_section_sorted() -> None:
    sources = valid_sources()
    sources["community_logs"]["sha256"] = "AB" * 32

    validated = validate_sources(dict(reversed(sources.items())))

    assert list(validated) == ["community_logs", "fresh_logs"]
    assert validated["community_logs"]["sha256"] == "ab" * 32
    assert validated["fresh_logs"]["sha256"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # Which format names exist is clean's to check (test_clean: source_formats); here, only the type.
        ({"format": 7}, "params.yaml: sources.fresh_logs.format must be str, got 7"),
        ({"uri": None}, "params.yaml: sources.fresh_logs.uri must be str, got None"),
        (
            {"uri": "ftp://host/a.jsonl"},
            "params.yaml: sources.fresh_logs.uri 'ftp://host/a.jsonl' has unsupported",
        ),
        ({"weight": -1}, "params.yaml: sources.fresh_logs.weight must be a number >= 0, got -1"),
        ({"weight": "0.3"}, "params.yaml: sources.fresh_logs.weight must be a number >= 0, got '0.3'"),
        ({"weight": True}, "params.yaml: sources.fresh_logs.weight must be a number >= 0, got True"),
        ({"trim": "yes"}, "params.yaml: sources.fresh_logs.trim must be bool, got 'yes'"),
        (
            {"sha256": "abc123"},
            "params.yaml: sources.fresh_logs.sha256 must be 64 hex characters, got 'abc123'",
        ),
        ({"sha256": "g" * 64}, "params.yaml: sources.fresh_logs.sha256 must be 64 hex characters"),
        (
            {"sha265": "a" * 64},
            "params.yaml: sources.fresh_logs has unknown key(s) sha265; known: uri, format",
        ),
    ],
)
def test_validate_sources_names_the_bad_key(change: dict, message: str) -> None:
    sources = valid_sources()
    sources["fresh_logs"].update(change)

    with pytest.raises(ChatmillError) as error:
        validate_sources(sources)

    assert str(error.value).startswith(message)


def test_validate_sources_missing_key() -> None:
    sources = valid_sources()
    del sources["fresh_logs"]["uri"]

    with pytest.raises(ChatmillError, match=r"^params.yaml: sources.fresh_logs.uri is missing$"):
        validate_sources(sources)


def test_validate_sources_needs_a_positive_weight() -> None:
    sources = valid_sources()
    for spec in sources.values():
        spec["weight"] = 0

    with pytest.raises(ChatmillError) as error:
        validate_sources(sources)

    assert (
        str(error.value)
        == "params.yaml: all sources have weight 0; give at least one source a positive weight"
    )


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({}, "params.yaml: sources is empty; add at least one source"),
        (None, "params.yaml: sources must be a mapping"),
        (
            {"../up": source("a.jsonl")},
            "params.yaml: source name '../up' must be letters, digits, _ and - only",
        ),
        (
            {"logs": "a.jsonl"},
            "params.yaml: sources.logs must be a mapping with keys uri, format, trim, weight",
        ),
    ],
)
def test_validate_sources_rejects_the_section(sources: object, message: str) -> None:
    with pytest.raises(ChatmillError) as error:
        validate_sources(sources)

    assert str(error.value).startswith(message)


def test_validate_sources_leaves_format_names_to_clean() -> None:
    sources = valid_sources()
    sources["fresh_logs"]["format"] = "xml"

    assert validate_sources(sources)["fresh_logs"]["format"] == "xml"


def test_validate_sources_checks_only_the_needed_keys_each_source_must_have() -> None:
    """The fetch stage reads uri and sha256 only: no format, trim or weight to require."""
    sources = {"fresh_logs": {"uri": "data/sources/fresh.jsonl"}}

    assert validate_sources(sources, needed=("uri",)) == {
        "fresh_logs": {"uri": "data/sources/fresh.jsonl", "sha256": None}
    }
    with pytest.raises(ChatmillError, match=r"^params.yaml: sources.fresh_logs.format is missing$"):
        validate_sources(sources)
    with pytest.raises(ChatmillError, match=r"^params.yaml: sources.fresh_logs.uri is missing$"):
        validate_sources({"fresh_logs": {"sha256": None}}, needed=("uri",))


def test_bad_params_stop_the_stage_before_fetching(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    Path("data/sources").mkdir(parents=True)
    Path("data/sources/fresh.jsonl").write_bytes(LOGS)
    sources = {
        "fresh_logs": source("data/sources/fresh.jsonl"),
        "web": source("https://example.org/logs.jsonl"),
    }
    status, out, err = run_fetch(sources, capsys, web="ftp://example.org/logs.jsonl")

    assert status == 1
    assert err == (
        "error: params.yaml: sources.web.uri 'ftp://example.org/logs.jsonl' has unsupported scheme 'ftp'; "
        "use a repo-relative path, an http(s):// URL or hf://datasets/OWNER/NAME[@REV]/PATH\n"
    )
    assert sorted(p.name for p in Path("data").iterdir()) == ["sources"]  # not even the good source


def test_fetch_leaves_the_record_format_to_clean(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """fetch reads no format: a format name only clean knows to be wrong does not stop it."""
    Path("data/sources").mkdir(parents=True)
    Path("data/sources/fresh.jsonl").write_bytes(LOGS)

    status, out, err = run_fetch({"fresh_logs": source("data/sources/fresh.jsonl", format="xml")}, capsys)

    assert (status, err) == (0, "")
    assert Path("data/raw/fresh_logs/fresh.jsonl").read_bytes() == LOGS
    assert "format" not in manifest()["fresh_logs"]
