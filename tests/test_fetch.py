"""The fetch stage (chatmill.fetch, run through stages/fetch.py) and the sources section (chatmill.sources):
local copies, HTTP downloads, Hub files and whole Hub datasets, all offline.

HTTP and the Hub are a stand-in server on 127.0.0.1. The hf:// tests run the real huggingface_hub client
(and the real `datasets` library) against it: it serves HEAD/GET on
/datasets/{repo}/resolve/{revision}/{path} with the headers the client requires (X-Repo-Commit, ETag,
Content-Length; X-Error-Code on a 404), and for a dataset repo held in a local folder (`server.datasets`,
laid out as on the Hub: data files, a README.md declaring configs) what `datasets` asks besides:
GET /api/datasets/{repo}/revision/{revision} (the commit a revision points to) and
GET /api/datasets/{repo}/tree/{revision}/{path} (the folder's listing).
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from conftest import DEFAULT_PARAMS, ROOT, run_stage, write_workspace
from huggingface_hub import constants

import chatmill.fetch as fetch
from chatmill.errors import ChatmillError
from chatmill.sources import HttpUrl, HubDataset, HubFile, LocalPath, parse_uri, validate_sources

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_token_never_printed"
LOGS = (
    b'{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]}\n' * 50
)


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# ---------------------------------------------------------------- a stand-in for web servers and the Hub


DATASET_API = re.compile(
    r"/api/datasets/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<revision>[^/]+)/?(?P<path>.*)"
)
DATASET_FILE = re.compile(r"/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)")


class StandIn(BaseHTTPRequestHandler):
    """Serves `server.files` by path, and the dataset repos of `server.datasets` (repo id: folder) at any
    revision, which all resolve to COMMIT. Paths in `server.truncated` send their length but only half
    the body."""

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def _respond(self, with_body: bool) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization")))
        path, query = unquote(urlsplit(self.path).path), parse_qs(urlsplit(self.path).query)
        if api := DATASET_API.fullmatch(path):
            return self._dataset_api(api, query.get("recursive") == ["true"], with_body)
        content = self.server.files.get(self.path)
        if (found := DATASET_FILE.fullmatch(path)) and found["repo"] in self.server.datasets:
            file = self.server.datasets[found["repo"]] / found["path"]
            content = file.read_bytes() if file.is_file() else None
        if content is None:
            return self._not_found("EntryNotFound")  # how the Hub says "no such file"
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", f'"{sha256(content)}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if with_body:
            # HTTP/1.0: returning closes the connection, so a short body is a download cut off midway.
            self.wfile.write(content[: len(content) // 2] if self.path in self.server.truncated else content)

    def _not_found(self, error_code: str) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _dataset_api(self, api: re.Match, recursive: bool, with_body: bool) -> None:
        folder = self.server.datasets.get(api["repo"])
        if folder is None:
            return self._not_found("RepoNotFound")
        if api["kind"] == "revision":
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            payload = {"id": api["repo"], "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
        else:
            base = folder / api["path"]
            if not base.is_dir():
                return self._not_found("EntryNotFound")
            payload = [
                {"type": "directory", "path": entry.relative_to(folder).as_posix(), "oid": "0" * 40}
                if entry.is_dir()
                else {
                    "type": "file",
                    "path": entry.relative_to(folder).as_posix(),
                    "size": entry.stat().st_size,
                    "oid": hashlib.sha1(entry.read_bytes()).hexdigest(),
                }
                for entry in sorted(base.rglob("*") if recursive else base.iterdir())
            ]
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    httpd.files, httpd.truncated, httpd.requests, httpd.datasets = {}, set(), [], {}
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


# ---------------------------------------------------------------- whole Hub datasets, through `datasets`

README = """---
configs:
- config_name: chats
  data_files:
  - split: train
    path: chats/train-*.parquet
  - split: test
    path: chats/test-*.parquet
- config_name: sample
  data_files: sample/*.parquet
---
# acme/chats: chit-chat in ShareGPT form
"""


def chat(origin_id: str, *turns: tuple[str, str]) -> dict:
    return {"id": origin_id, "conversations": [{"from": role, "value": text} for role, text in turns]}


def task(instruction: str, output: str | None) -> dict:
    return {"instruction": instruction, "input": "", "output": output}


CHATS = [
    chat("c1", ("human", "Hi! Who are you?"), ("gpt", "A traveller from the north, resting by the fire.")),
    chat("c2", ("human", "Any news?"), ("robot", "Beep.")),
    {"id": "c3", "conversations": None},
    chat("c4", ("human", "Tea or coffee?"), ("gpt", "Tea, always, with a little honey.")),
]
TASKS = [
    task("Name a prime number.", "Seven is a prime number."),
    task("Add 2 and 3.", None),
    task("Write a haiku about rain.", "Soft rain on the roof,\nthe kettle hums a low song,\nthe cat dreams."),
]


def dataset_repos(folder: Path) -> dict[str, Path]:
    """Two dataset repos as the Hub holds them: acme/chats, parquet, with a README.md that declares two
    configs; acme/tasks, JSON Lines, no README (one config, `default`; the split named by the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chats, tasks = folder / "acme-chats", folder / "acme-tasks"
    for subfolder in (chats / "chats", chats / "sample", tasks / "data"):
        subfolder.mkdir(parents=True)
    (chats / "README.md").write_text(README)
    pq.write_table(pa.Table.from_pylist(CHATS), chats / "chats/train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(CHATS[:1]), chats / "chats/test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(CHATS[3:]), chats / "sample/train-00000-of-00001.parquet")
    (tasks / "data/train.jsonl").write_text("".join(json.dumps(task) + "\n" for task in TASKS))
    return {"acme/chats": chats, "acme/tasks": tasks}


def dataset_source(uri: str, format_name: str, **keys: str) -> dict:
    return {"uri": uri, "format": format_name, "trim": False, "weight": 1.0, **keys}


def run_fetch_process(sources: dict, tmp_path: Path, **params: dict) -> subprocess.CompletedProcess:
    """stages/fetch.py as DVC runs it, in a process of its own: `datasets` reads HF_ENDPOINT and its
    cache folder from the environment when it is imported."""
    write_workspace(Path.cwd(), {"sources": sources, **params}, replace=True)
    cache = {"HF_HOME": str(tmp_path / "hf-home"), "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    return subprocess.run(
        [sys.executable, str(ROOT / "stages/fetch.py")],
        env={**os.environ, **cache},
        capture_output=True,
        text=True,
    )


def test_a_whole_hub_dataset_is_loaded_through_datasets_at_a_resolved_commit(
    workdir: Path, hub: ThreadingHTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import pyarrow.parquet as pq

    hub.datasets.update(dataset_repos(tmp_path))
    sources = {
        "logs": dataset_source("hf://datasets/acme/chats@v1.0", "sharegpt", config="chats"),
        "tasks": dataset_source("hf://datasets/acme/tasks", "alpaca", split="train"),
    }

    clean = {**DEFAULT_PARAMS["clean"], "max_quarantine_fraction": 0.5}  # 3 of 7 rows are malformed
    result = run_fetch_process(sources, tmp_path, clean=clean)

    assert result.returncode == 0, result.stderr
    logs, tasks = Path("data/raw/logs/train.parquet"), Path("data/raw/tasks/train.parquet")

    def entry(uri: str, file: Path, revision: str, config: str, rows: int) -> dict:
        fetched = {"uri": uri, "file": f"{file.parent.name}/{file.name}", "bytes": file.stat().st_size}
        loaded = {"revision": revision, "commit": COMMIT, "config": config, "split": "train", "rows": rows}
        return {**fetched, "sha256": sha256(file.read_bytes()), **loaded}

    assert manifest() == {
        # v1.0 resolved to the commit it points to; split: the default, train
        "logs": entry("hf://datasets/acme/chats@v1.0", logs, "v1.0", "chats", 4),
        "tasks": entry("hf://datasets/acme/tasks", tasks, "main", "default", 3),  # datasets' name
    }
    # The rows as they are, malformed ones included: fetch parses nothing.
    assert pq.read_table(logs).to_pylist() == CHATS and pq.read_table(tasks).to_pylist() == TASKS
    assert f"fetch: logs: data/raw/logs/train.parquet (4 rows at commit {COMMIT}, " in result.stdout
    # The revision is resolved once; every file is then read at that commit, with the token.
    paths = [path for _, path, _ in hub.requests]
    assert {"/api/datasets/acme/chats/revision/v1.0", "/api/datasets/acme/tasks/revision/main"} <= set(paths)
    assert all(COMMIT in path for path in paths if "/resolve/" in path or "/tree/" in path)
    assert {auth for _, _, auth in hub.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in result.stdout + result.stderr + Path("data/raw/manifest.json").read_text()

    # clean reads them with the record parsers: the malformed rows are quarantined with their reasons.
    run_stage("clean")
    quarantine = [json.loads(line) for line in Path("data/clean/quarantine.jsonl").read_text().splitlines()]
    roles = "['assistant', 'chatgpt', 'gpt', 'human', 'system', 'user']"
    assert [(entry["source"], entry["location"], entry["reason"]) for entry in quarantine] == [
        ("logs", "train.parquet:#1", f"messages[1].from is 'robot', expected one of {roles}"),
        ("logs", "train.parquet:#2", "missing field 'conversations'"),
        ("tasks", "train.parquet:#1", "missing field 'output'"),
    ]
    stats = json.loads(Path("data/clean/stats.json").read_text())
    assert (stats["in"], stats["out"], stats["quarantined"]) == (7, 4, 3)


def test_the_dataset_repo_folders_load_through_the_same_datasets_call(tmp_path: Path) -> None:
    """The folders the stand-in serves are datasets as `datasets` reads them from disk too."""
    repos = {repo: str(folder) for repo, folder in dataset_repos(tmp_path).items()}

    assert fetch.load_dataset_rows(repos["acme/chats"], "chats", "test").to_list() == CHATS[:1]
    assert fetch.load_dataset_rows(repos["acme/chats"], "sample", "train").to_list() == CHATS[3:]
    assert fetch.load_dataset_rows(repos["acme/tasks"], None, "train").to_list() == TASKS


@pytest.mark.parametrize(
    ("uri", "keys", "message"),
    [
        (
            "hf://datasets/acme/chats",
            {"config": "nope"},
            "error: fetch: source 'logs': cannot load split train of config nope of dataset acme/chats at "
            f"{COMMIT}: BuilderConfig 'nope' not found. Available: ['chats', 'sample']; check sources.logs",
        ),
        (
            "hf://datasets/acme/chats",
            {"config": "chats", "split": "validation"},
            "error: fetch: source 'logs': cannot load split validation of config chats of dataset acme/chats",
        ),
        (
            "hf://datasets/acme/gone",
            {},
            "error: fetch: source 'logs': cannot find dataset acme/gone at revision main: 404",
        ),
    ],
    ids=["unknown config", "unknown split", "unknown dataset"],
)
def test_a_dataset_that_cannot_be_loaded_is_a_one_line_error(
    uri: str, keys: dict, message: str, workdir: Path, hub: ThreadingHTTPServer, tmp_path: Path
) -> None:
    hub.datasets.update(dataset_repos(tmp_path))

    result = run_fetch_process({"logs": dataset_source(uri, "sharegpt", **keys)}, tmp_path)

    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(message), result.stderr
    assert not Path("data/raw").exists()


# ---------------------------------------------------------------- parsing uris and validating params


@pytest.mark.parametrize(
    ("uri", "location"),
    [
        ("data/sources/a.jsonl.gz", LocalPath("data/sources/a.jsonl.gz")),
        ("https://example.org/x/logs.parquet", HttpUrl("https://example.org/x/logs.parquet")),
        ("hf://datasets/PygmalionAI/PIPPA/pippa.jsonl", HubFile("PygmalionAI/PIPPA", "main", "pippa.jsonl")),
        ("hf://datasets/acme/chats@refs%2Fpr%2F3/a/b.json", HubFile("acme/chats", "refs/pr/3", "a/b.json")),
        ("hf://datasets/PygmalionAI/PIPPA", HubDataset("PygmalionAI/PIPPA", "main")),
        ("hf://datasets/acme/chats@v1.0", HubDataset("acme/chats", "v1.0")),
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
        (
            "hf://models/acme/chats/a.json",
            "is not of the form hf://datasets/OWNER/NAME[@REV] (a whole dataset) or "
            "hf://datasets/OWNER/NAME[@REV]/PATH (a file)",
        ),
        ("https://example.org/", "'https://example.org/' does not end in a file name"),
    ],
)
def test_parse_uri_rejects(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
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
        (
            {"config": "default"},
            "params.yaml: sources.fresh_logs.config applies to a whole Hub dataset only "
            "(uri hf://datasets/OWNER/NAME[@REV]); remove it, or point uri at the dataset",
        ),
        (
            {"uri": "hf://datasets/acme/chats", "split": ""},
            "params.yaml: sources.fresh_logs.split must be the name of a dataset split, got ''",
        ),
        (
            {"uri": "hf://datasets/acme/chats", "config": 3},
            "params.yaml: sources.fresh_logs.config must be the name of a dataset config, got 3",
        ),
        (
            {"uri": "hf://datasets/acme/chats@v1", "sha256": "a" * 64},
            "params.yaml: sources.fresh_logs.sha256 checks one file; pin a whole dataset by a commit in "
            "its uri instead (hf://datasets/OWNER/NAME@COMMIT; data/raw/manifest.json records the commit",
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
        "use a repo-relative path, an http(s):// URL, hf://datasets/OWNER/NAME[@REV] (a whole dataset) or "
        "hf://datasets/OWNER/NAME[@REV]/PATH (a file)\n"
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
