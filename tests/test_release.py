"""make release: the chat template, the folder and its model card, the refusals and the push, all offline.

The Hub is a stand-in on 127.0.0.1 that the real huggingface_hub client talks to. It keeps repos in
memory and serves what a release calls:

    POST /api/repos/create                          create a repo (409 if it exists)
    PUT  /api/models/{repo}/settings                 set its visibility
    POST /api/models/{repo}/branch/{branch}          create a branch from main (409 if it exists)
    GET  /api/models/{repo}/tree/{revision}          list a branch's files (upload_folder's delete_patterns)
    POST /api/validate-yaml                          check the model card's metadata
    POST /api/models/{repo}/preupload/{revision}     say which files go through LFS (*.safetensors)
    POST /{repo}.git/info/lfs/objects/batch          LFS batch API: where to upload each object
    PUT  /lfs/{oid}, POST /lfs/verify                the storage the batch API points to
    POST /api/models/{repo}/commit/{revision}        one commit (NDJSON: header, files, LFS files, deletions)

Every /api and .git call must carry the token (401 otherwise). Xet storage is switched off in the
client, so weights take the LFS route. Each test runs the release in a copy of a small git + DVC
project whose stages copy prebuilt tiny models into models/part-01 and models/part-02.
"""

import base64
import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from conftest import ROOT
from huggingface_hub import ModelCard, constants
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import chatmill
from chatmill import release
from chatmill.errors import ChatmillError
from chatmill.generation import Setting, validate_grid
from chatmill.modeling import scratch_model
from chatmill.prompt import encode_prompt, prepare_tokenizer, prompt_format
from chatmill.schema import USER_NAME

TOKEN = "hf_fake_release_token_0123456789"
REPO = "acme/chatmill-test"
GRID = [
    {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1},
    {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0},
]
PARAMS = {
    "sources": {
        "community_logs": {
            "uri": "hf://datasets/acme/pippa@v1/pippa.jsonl",
            "format": "pippa",
            "trim": True,
            "weight": 0.7,
        },
        "instructions": {"uri": "data/sources/alpaca.json", "format": "alpaca", "trim": False, "weight": 0.3},
    },
    "clean": {"pii": {"enabled": True, "types": ["email", "phone"]}},
    "trim": {"enabled": True, "unit": "words", "threshold": 8, "ramp": 40, "curve": "linear", "seed": 0},
    "mix": {"by": "conversations", "seed": 0},
    "model": {
        "base": "acme/tiny-base",
        "revision": "main",
        "seed": 0,
        "scratch": {
            "vocab_size": 300,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        },
    },
    "train": {"parts": 2, "global_batch": 4, "micro_batch": 2, "lr": 1e-3, "warmup_steps": 2, "bf16": False},
    "eval": {
        "model": "models/part-02",
        "prompts": 4,
        "max_new_tokens": 8,
        "batch_size": 4,
        "short_words": 5,
        "seed": 0,
        "grid": GRID,
    },
    "release": {
        "repo_id": REPO,
        "revision": "dev",
        "private": True,
        "experiment": "experiment-7",
        "bot_name": "Assistant",
        "sampling": "t0.7-p0.9-k40-r1.1",
        "max_shard_size": "100KB",  # the tiny model is ~200 KB: the release comes in shards
        "license": "apache-2.0",
        "tags": ["chatmill", "roleplay"],
        "merge": True,
    },
}
STATS = {
    "data/raw/manifest.json": {
        "community_logs": {"uri": "hf://datasets/acme/pippa@v1/pippa.jsonl", "bytes": 1_234_567},
        "instructions": {"uri": "data/sources/alpaca.json", "bytes": 5_120},
    },
    "data/clean/stats.json": {
        "in": 110,
        "out": 100,
        "dropped": {"duplicate": 7},
        "quarantined": 3,
        "sources": {
            "community_logs": {"in": 80, "out": 70, "dropped_duplicate": 7, "quarantined": 3},
            "instructions": {"in": 30, "out": 30},
        },
    },
    "data/trimmed/stats.json": {
        "in": 100,
        "out": 80,
        "keep_rate": 0.8,
        "dropped": {"short_replies": 20},
        "quarantined": 0,
        "sources": {
            "community_logs": {"in": 70, "out": 50, "trimmed": True},
            "instructions": {"in": 30, "out": 30, "trimmed": False},
        },
    },
    "data/mixed/stats.json": {
        "by": "conversations",
        "in": 80,
        "out": 72,
        "dropped": {"downsampled": 8},
        "quarantined": 0,
        "composition": {
            "community_logs": {
                "weight": 0.7,
                "target_share": 0.7,
                "share": 0.694444,
                "rows": 50,
                "repeat_factor": 1.0,
                "limit": None,
            },
            "instructions": {
                "weight": 0.3,
                "target_share": 0.3,
                "share": 0.305556,
                "rows": 22,
                "repeat_factor": 1.0,
                "limit": None,
            },
        },
    },
    "data/shards/stats.json": {
        "seq_len": 128,
        "parts": {
            "part-01": {"sequences": 8, "tokens": 1024, "supervised_tokens": 600},
            "part-02": {"sequences": 8, "tokens": 1024, "supervised_tokens": 610},
        },
    },
}


def group(short_rate: float, median_words: float, distinct_2: float, regens: float, replies: int) -> dict:
    return {
        "short_rate": short_rate,
        "median_words": median_words,
        "distinct_2": distinct_2,
        "regens_to_accept": regens,
        "n_replies": replies,
    }


METRICS = {  # the breakdown, reports/sample-eval.json
    "eval_loss": 2.5,
    "perplexity": 12.182494,
    "overall": group(0.125, 21.0, 0.61, 1.25, 8),
    "settings": {
        "t0.7-p0.9-k40-r1.1": group(0.0, 24.0, 0.7, 1.0, 4),
        "t1.0-p1.0-k0-r1.0": group(0.25, 18.0, 0.8, 1.5, 4),
    },
    "prompt_sets": {"heldout": {"n_prompts": 3, "n_replies": 6}},  # fewer than eval.prompts: 4
}
DVC_YAML = {
    "stages": {
        "train-part1": {
            "cmd": "mkdir -p models && cp -r prebuilt/part-01 models/part-01",
            "deps": ["prebuilt/part-01"],
            "params": ["train"],
            "outs": ["models/part-01"],
        },
        "train-part2": {
            "cmd": "cp -r prebuilt/part-02 models/part-02",
            "deps": ["prebuilt/part-02", "models/part-01"],
            "params": ["train"],
            "outs": ["models/part-02"],
        },
        "sample-eval": {
            "cmd": "mkdir -p metrics reports && cp prebuilt/sample-eval.json reports/sample-eval.json"
            " && echo '{\"eval_loss\": 2.5}' > metrics/sample-eval.json",
            "deps": ["prebuilt/sample-eval.json", "models/part-02"],
            "params": ["eval"],
            "outs": ["reports/sample-eval.json"],
            "metrics": [{"metrics/sample-eval.json": {"cache": False}}],
        },
    }
}
GIT_IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@example.com"]


# ---------------------------------------------------------------- the chat template


def test_chat_template_renders_the_training_format(tiny_tokenizer, conversation_factory) -> None:
    conversation = conversation_factory("c1", bot_replies=("Hello there, traveller.", "Of course."))
    conversation["scenario"] = "A rainy night at the inn."
    conversation["turns"].insert(2, {"role": "system", "name": "system", "text": "*The door creaks.*"})
    form = prompt_format(tiny_tokenizer)  # no format recorded: pygmalion
    messages, variables = form.messages(conversation)
    variables["chat_template"] = template = form.chat_template("Assistant")

    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, **variables)
    prompt = tiny_tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, **variables)
    marked = tiny_tokenizer.apply_chat_template(messages[:3], return_assistant_tokens_mask=True, **variables)

    assert text == form.render_text(conversation)
    assert prompt["input_ids"] == encode_prompt(tiny_tokenizer, conversation, conversation["turns"][:-1])
    supervised = [
        token for token, mask in zip(marked["input_ids"], marked["assistant_masks"], strict=True) if mask
    ]
    assert tiny_tokenizer.decode(supervised) == " Hello there, traveller.</s>"  # as shard labels it
    plain = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi."}],
        tokenize=False,
        add_generation_prompt=True,
        chat_template=template,
    )
    assert plain == f"Assistant's Persona: \nScenario: \n<START>\n{USER_NAME}: Hi.\nAssistant:"


def test_a_chatml_release_carries_its_template_and_stops_at_im_end(tiny_tokenizer) -> None:
    tokenizer = copy.deepcopy(tiny_tokenizer)
    prepare_tokenizer(tokenizer, "chatml", "Assistant")
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    setting = Setting(temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1)
    config = release.generation_config(setting, 32, tokenizer)
    assert config.eos_token_id == [im_end, tokenizer.eos_token_id, im_start]
    section = release.prompt_section(prompt_format(tokenizer), "Assistant")
    assert "`prompt.format: chatml`" in section
    assert "<|im_start|>user\n{user message}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>" in section
    assert "loss on each reply and its `<|im_end|>` only" in section


# ---------------------------------------------------------------- pure functions


def settings() -> list:
    return validate_grid(GRID)


def test_validate_release_takes_the_repo_from_the_command_line() -> None:
    params = release.validate_release(PARAMS["release"], settings(), "someone/else")

    assert params.repo_id == "someone/else"
    assert params.sampling.name == "t0.7-p0.9-k40-r1.1" and params.sampling.top_k == 40
    assert release.validate_release({**PARAMS["release"], "repo_id": None}, settings(), None).repo_id is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"repo_id": "no-owner"}, "release: repo 'no-owner' must be OWNER/NAME (release.repo_id or REPO=)"),
        (
            {"sampling": "t9"},
            "params.yaml: release.sampling 't9' is not a setting of eval.grid; use one of "
            "t0.7-p0.9-k40-r1.1, t1.0-p1.0-k0-r1.0",
        ),
        ({"max_shard_size": "big"}, "params.yaml: release.max_shard_size 'big' must be a size such as 5GB"),
        ({"private": "yes"}, "params.yaml: release.private must be bool, got 'yes'"),
        ({"revision": " "}, "params.yaml: release.revision is empty; set it"),
    ],
)
def test_validate_release_names_the_bad_key(change: dict, message: str) -> None:
    with pytest.raises(ChatmillError) as error:
        release.validate_release({**PARAMS["release"], **change}, settings(), None)

    assert str(error.value) == message


def test_lineage_follows_the_dependencies_upstream() -> None:
    def stage(deps: list[str], outs: list[str]) -> dict:
        return {
            "deps": [{"path": path, "md5": "d"} for path in deps],
            "outs": [{"path": path, "md5": f"{path}-md5"} for path in outs],
        }

    lock = {
        "stages": {
            "shard": stage(["stages/shard.py"], ["data/shards"]),
            "train-part1": stage(["data/shards/part-01"], ["models/part-01"]),
            "train-part2": stage(["data/shards/part-02", "models/part-01"], ["models/part-02"]),
            "sample-eval": stage(["models/part-02"], ["metrics/sample-eval.json"]),
        }
    }

    assert release.lineage(lock, ["train-part1"]) == [
        ("shard", "data/shards", "data/shards-md5"),
        ("train-part1", "models/part-01", "models/part-01-md5"),
    ]
    assert [stage for stage, _, _ in release.lineage(lock, ["train-part2", "sample-eval"])] == [
        "shard",
        "train-part1",
        "train-part2",
        "sample-eval",
    ]
    with pytest.raises(
        ChatmillError, match=r"dvc.lock has no stage train-part3; run `dvc repro train-part3`"
    ):
        release.lineage(lock, ["train-part3"])


def test_hub_metadata_names_hub_data_sets_and_base_models() -> None:
    sources = {
        **PARAMS["sources"],
        "more": {"uri": "hf://datasets/acme/pippa/extra.jsonl", "format": "pippa", "trim": True, "weight": 1},
        "chats": {"uri": "hf://datasets/acme/chats@v2", "format": "sharegpt", "trim": True, "weight": 1},
    }
    assert release.hub_datasets(sources) == ["acme/pippa", "acme/chats"]
    assert release.hub_base_model("EleutherAI/gpt-j-6b") == "EleutherAI/gpt-j-6b"
    assert release.hub_base_model("scratch") is None


def test_make_release_passes_part_repo_and_dry_run() -> None:
    def command(*variables: str) -> str:
        output = subprocess.run(
            ["make", "-n", "-s", "release", *variables], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return next(line for line in output.splitlines() if "-m chatmill.release" in line).strip()

    assert command("PART=3", "REPO=acme/x", "DRY_RUN=1").endswith(
        "python -m chatmill.release --part 3 --repo acme/x --dry-run"
    )
    assert command("DRY_RUN=0").endswith("python -m chatmill.release")


# ---------------------------------------------------------------- a project with trained parts


def run(cwd: Path, *command: str) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def git(cwd: Path, *args: str) -> str:
    return run(cwd, "git", *GIT_IDENTITY, *args)


@pytest.fixture(scope="module")
def dvc_env(tmp_path_factory) -> Iterator[None]:
    """DVC without analytics, with its site cache in the test's temporary folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("DVC_NO_ANALYTICS", "1")
    patch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def template_project(tmp_path_factory, tiny_tokenizer, dvc_env) -> Path:
    """A committed git + DVC project in which `dvc repro` has made models/part-01, part-02 and the metrics."""
    project = tmp_path_factory.mktemp("project")
    model = scratch_model(PARAMS["model"]["scratch"], tiny_tokenizer, seed=0)
    for part in (1, 2):
        folder = project / f"prebuilt/part-0{part}"
        model.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        state = {"part": part, "global_step": 2 * part, "loss_first": 5.25, "lr": 0.0005}
        (folder / "train_state.json").write_text(json.dumps(state))
        (folder / "resume/final").mkdir(parents=True)
        (folder / "resume/final/optimizer_states.pt").write_bytes(b"optimizer state")
    (project / "prebuilt/sample-eval.json").write_text(json.dumps(METRICS))
    for path, stats in STATS.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(json.dumps(stats))
    (project / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    (project / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    git(project, "init", "-q")
    run(project, sys.executable, "-m", "dvc", "init", "-q")
    run(project, sys.executable, "-m", "dvc", "repro", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "two trained parts")
    return project


@pytest.fixture(autouse=True)
def no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token anywhere unless a test sets one: not in the environment, no saved login."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home/token"))


@pytest.fixture
def project(template_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the project, as the working directory."""
    copy = tmp_path / "project"
    shutil.copytree(template_project, copy, symlinks=True)
    monkeypatch.chdir(copy)
    return copy


def run_release(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str):
    """Run `python -m chatmill.release ARGS` in this process; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["python -m chatmill.release", *args])
    try:
        release.main()
        status = 0
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- a stand-in for the Hub


class StandInHub(BaseHTTPRequestHandler):
    ROUTES = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("PUT", r"/api/models/(?P<repo>[^/]+/[^/]+)/settings", "settings"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>[^/]+)", "create_branch"),
        ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<revision>[^/]+)", "tree"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<revision>[^/]+)", "preupload"),
        ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
        ("POST", r"/lfs/verify", "lfs_verify"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<revision>[^/]+)", "commit"),
    ]

    def do_GET(self) -> None:
        self.route()

    def do_POST(self) -> None:
        self.route()

    def do_PUT(self) -> None:
        self.route()

    def route(self) -> None:
        hub = self.server
        path = self.path.split("?")[0]
        self.body = self.read_body()
        hub.requests.append((self.command, path, self.headers.get("Authorization")))
        if not path.startswith("/lfs/") and self.headers.get("Authorization") != f"Bearer {hub.token}":
            return self.reply(401, {"error": "Invalid credentials in Authorization header"})
        for method, pattern, handler in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if method == self.command and match:
                return getattr(self, handler)(
                    **{key: unquote(value) for key, value in match.groupdict().items()}
                )
        self.reply(404, {"error": f"no route {self.command} {path}"})

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status: int, payload: object = None, error_code: str | None = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.end_headers()
        self.wfile.write(body)

    def repo(self, repo: str) -> dict | None:
        return self.server.repos.get(repo)

    def create_repo(self) -> None:
        request = json.loads(self.body)
        repo_id = f"{request['organization']}/{request['name']}"
        url = f"{self.server.url}/{repo_id}"
        if repo_id in self.server.repos:
            return self.reply(409, {"error": "You already created this model repo", "url": url})
        self.server.repos[repo_id] = new_repo(private=request.get("visibility") == "private")
        self.reply(200, {"url": url})

    def settings(self, repo: str) -> None:
        self.repo(repo)["private"] = json.loads(self.body)["visibility"] == "private"
        self.reply(200, {})

    def create_branch(self, repo: str, branch: str) -> None:
        branches = self.repo(repo)["branches"]
        if branch in branches:
            return self.reply(409, {"error": "Branch already exists"})
        branches[branch] = dict(branches["main"])
        self.reply(200, {})

    def tree(self, repo: str, revision: str) -> None:
        files = self.repo(repo)["branches"].get(revision)
        if files is None:
            return self.reply(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
        listing = [
            {"type": "file", "path": path, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
            for path, content in sorted(files.items())
        ]
        self.reply(200, listing)

    def validate_yaml(self) -> None:
        self.server.cards.append(json.loads(self.body)["content"])
        self.reply(200, {"errors": [], "warnings": []})

    def preupload(self, repo: str, revision: str) -> None:
        files = json.loads(self.body)["files"]
        modes = [
            {
                "path": file["path"],
                "uploadMode": "lfs" if file["path"].endswith(".safetensors") else "regular",
                "shouldIgnore": False,
            }
            for file in files
        ]
        self.reply(200, {"files": modes})

    def lfs_batch(self, repo: str) -> None:
        objects = [
            {
                "oid": item["oid"],
                "size": item["size"],
                "authenticated": True,
                "actions": {
                    "upload": {"href": f"{self.server.url}/lfs/{item['oid']}"},
                    "verify": {"href": f"{self.server.url}/lfs/verify"},
                },
            }
            for item in json.loads(self.body)["objects"]
        ]
        self.reply(200, {"transfer": "basic", "objects": objects})

    def lfs_upload(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            return self.reply(400, {"error": "sha256 mismatch"})
        self.server.lfs[oid] = self.body
        self.reply(200)

    def lfs_verify(self) -> None:
        self.reply(200 if json.loads(self.body)["oid"] in self.server.lfs else 404, {})

    def commit(self, repo: str, revision: str) -> None:
        files = self.repo(repo)["branches"][revision]
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header, operations = lines[0]["value"], lines[1:]
        for operation in operations:
            key, value = operation["key"], operation["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                files[value["path"]] = self.server.lfs[value["oid"]]
            elif key == "deletedFile":
                del files[value["path"]]
        oid = hashlib.sha1(self.body).hexdigest()
        self.repo(repo)["commits"].append({"revision": revision, **header, "operations": operations})
        self.reply(200, {"commitUrl": f"{self.server.url}/{repo}/commit/{oid}", "commitOid": oid})

    def log_message(self, *args: object) -> None:
        pass


def new_repo(private: bool) -> dict:
    gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    return {"private": private, "branches": {"main": {".gitattributes": gitattributes}}, "commits": []}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    """The stand-in, and the real huggingface_hub client pointed at it with HF_TOKEN set."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    server.url = f"http://127.0.0.1:{server.server_port}"
    server.token, server.repos, server.lfs, server.cards, server.requests = TOKEN, {}, {}, [], []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub reads these environment variables once, at import: set what it derived from them.
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(
        constants, "HF_HUB_DISABLE_XET", True
    )  # uploads through LFS, which the stand-in speaks
    yield server
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- dry run: the folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()
    }


def test_dry_run_builds_a_folder_that_loads_and_chats(
    project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("notes.txt").write_text("not committed")
    commit = git(project, "rev-parse", "HEAD").strip()

    status, out, err = run_release(capsys, monkeypatch, "--dry-run")

    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: release: {reason} (DRY_RUN: not pushing anyway)"
        for reason in (
            "no Hugging Face token: set HF_TOKEN or run `hf auth login`",
            "the git tree has uncommitted changes (notes.txt); commit them first",
        )
    ]
    files = folder_bytes(Path("release"))
    weights = sorted(name for name in files if name.endswith(".safetensors"))
    assert len(weights) > 1 and "model.safetensors.index.json" in files  # sharded at release.max_shard_size
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "README.md",
    } <= set(files)
    assert not any(name.startswith("resume/") or name == "train_state.json" for name in files)
    assert f'"Part 2/2 of experiment-7, git {commit}"' in out
    assert f"would push it to {REPO}, branch dev (private) in one commit" in out

    generation = json.loads(files["generation_config.json"])
    assert {
        key: generation[key] for key in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
    } == {
        "do_sample": True,
        **GRID[0],
    }
    assert generation["max_new_tokens"] == PARAMS["eval"]["max_new_tokens"]

    card = ModelCard.load(Path("release/README.md"))
    assert card.data.license == "apache-2.0" and card.data.base_model == "acme/tiny-base"
    assert card.data.datasets == ["acme/pippa"] and card.data.tags == ["chatmill", "roleplay"]
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    lock = yaml.safe_load(Path("dvc.lock").read_text())
    model_md5 = lock["stages"]["train-part2"]["outs"][0]["md5"]
    for expected in (
        "**experiment-7, part 2/2**: a conversational model fine-tuned from `acme/tiny-base` by chatmill "
        "on community_logs (pippa, 69.4%), instructions (alpaca, 30.6%).",
        "You: {user message}\n{bot}: {reply}</s>",
        # The sources actually used: format, where from, size, what each stage kept, share of the mix.
        "| community_logs | pippa | `hf://datasets/acme/pippa@v1/pippa.jsonl` | 1.2 MB | 80 | 70 | 50 | 50 "
        "| 69.4% | 70.0% |",
        "| instructions | alpaca | `data/sources/alpaca.json` | 5.1 kB | 30 | 30 | 30 | 22 | 30.6% | 30.0% |",
        "last user turn of\n3 held-out conversations",  # the number sample-eval used, not eval.prompts
        "`t0.7-p0.9-k40-r1.1` (recommended) | 0.0 | 24.0 | 0.7 | 1.0 | 4 |",
        "## Limitations",
        "personal data that cleaning missed (cleaning replaced email, phone with placeholders)",
        f"git commit `{commit}` (with uncommitted changes: a dry run, never pushed)",
        f"| train-part2 | `models/part-02` | `{model_md5}` |",
        f"chatmill {chatmill.__version__}",
    ):
        assert expected in card.text
    assert "role-play model trained on community chat logs" not in card.text
    # Settings and results in tables of their own: train.lr is what was asked, lr what the last step used.
    settings, results = card.text.split("Settings (params.yaml):")[1].split("Results of this part")
    assert "| train.lr | 0.001 |" in settings and "loss_first" not in settings
    results = results.split("## Evaluation")[0]
    assert "| lr | 0.0005 |" in results and "| loss_first | 5.25 |" in results and "train." not in results

    tokenizer = AutoTokenizer.from_pretrained("release")
    model = AutoModelForCausalLM.from_pretrained("release")
    messages = [
        {"role": "system", "content": "A kind innkeeper."},
        {"role": "user", "content": "A room, please."},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "Assistant's Persona: A kind innkeeper.\nScenario: \n<START>\nYou: A room, please.\nAssistant:"
    )
    chat = pipeline("text-generation", model=model, tokenizer=tokenizer)
    output = chat(messages, tokenizer_encode_kwargs={"bot_name": "Mira"}, stop_sequence="\nYou:")
    reply = output[0]["generated_text"]
    assert reply[:2] == messages and reply[2]["role"] == "assistant" and isinstance(reply[2]["content"], str)

    status, _, err = run_release(capsys, monkeypatch, "--dry-run")
    assert status == 0, err
    assert folder_bytes(Path("release")) == files  # the same inputs give the same folder, byte for byte


# ---------------------------------------------------------------- refusals


def make_stale(project: Path) -> None:
    (project / "prebuilt/part-02/train_state.json").write_text(json.dumps({"part": 2, "global_step": 99}))
    git(project, "commit", "-qam", "retrained part 2 elsewhere")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no token", "no Hugging Face token: set HF_TOKEN or run `hf auth login`"),
        ("no repo", "no Hub repo: set release.repo_id in params.yaml or pass REPO=OWNER/NAME"),
        ("dirty tree", "the git tree has uncommitted changes (notes.txt); commit them first"),
        (
            "stale model",
            "`dvc status` is not clean (train-part2): the model does not match the code and "
            "params; run `dvc repro train-part2 sample-eval` and commit dvc.lock",
        ),
    ],
)
def test_release_refuses_with_a_one_line_reason(
    case: str,
    message: str,
    project: Path,
    hub: ThreadingHTTPServer,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
    elif case == "no repo":
        params = yaml.safe_load(Path("params.yaml").read_text())
        params["release"]["repo_id"] = None
        Path("params.yaml").write_text(yaml.safe_dump(params))
    elif case == "dirty tree":
        Path("notes.txt").write_text("not committed")
    else:
        make_stale(project)

    status, out, err = run_release(capsys, monkeypatch)

    assert (status, err) == (1, f"error: release: {message}\n")
    assert not Path("release").exists()  # refused before building anything
    assert hub.requests == []


# ---------------------------------------------------------------- pushing


def test_release_pushes_one_commit_that_loads_and_never_shows_the_token(
    project: Path, hub: ThreadingHTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    commit = git(project, "rev-parse", "HEAD").strip()

    status, out, err = run_release(capsys, monkeypatch)

    assert status == 0, err
    repo = hub.repos[REPO]
    assert repo["private"] is True
    assert list(repo["branches"]["main"]) == [".gitattributes"]  # the part went to the dev branch only
    assert len(repo["commits"]) == 1
    pushed = repo["commits"][0]
    assert pushed["revision"] == "dev"
    assert pushed["summary"] == f"Part 2/2 of experiment-7, git {commit}"
    released = folder_bytes(Path("release"))
    assert (
        repo["branches"]["dev"]
        == {".gitattributes": new_repo(False)["branches"]["main"][".gitattributes"]} | released
    )
    assert {op["key"] for op in pushed["operations"] if op["value"]["path"].endswith(".safetensors")} == {
        "lfsFile"
    }
    assert set(hub.cards) == {released["README.md"].decode()}  # the card the Hub checked is the one pushed
    assert f"{hub.url}/{REPO}/commit/" in out
    api_calls = [(method, path, auth) for method, path, auth in hub.requests if not path.startswith("/lfs/")]
    assert {auth for _, _, auth in api_calls} == {f"Bearer {TOKEN}"}

    downloaded = tmp_path / "downloaded"
    for name, content in repo["branches"]["dev"].items():
        (downloaded / name).parent.mkdir(parents=True, exist_ok=True)
        (downloaded / name).write_bytes(content)
    tokenizer = AutoTokenizer.from_pretrained(downloaded)
    model = AutoModelForCausalLM.from_pretrained(downloaded)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello?"}], add_generation_prompt=True, return_tensors="pt"
    )
    generated = model.generate(**prompt)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    # The token reached the Hub in the Authorization header and nowhere else.
    secret = TOKEN.encode()
    written = [path for path in tmp_path.rglob("*") if path.is_file() and secret in path.read_bytes()]
    assert written == []
    assert TOKEN not in out + err
    assert TOKEN not in json.dumps(repo["commits"]) and TOKEN not in "".join(hub.cards)
    assert not any(secret in content for content in repo["branches"]["dev"].values())
    assert TOKEN not in git(project, "log", "--all", "-p")


def test_release_replaces_stale_weights_and_keeps_other_files(
    project: Path, hub: ThreadingHTTPServer, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = new_repo(private=False)
    existing["branches"]["dev"] = {
        ".gitattributes": b"*.safetensors filter=lfs\n",
        "model.safetensors": b"weights of an earlier, unsharded push",
        "NOTES.md": b"kept",
    }
    hub.repos[REPO] = existing

    status, out, err = run_release(capsys, monkeypatch)

    assert status == 0, err
    assert existing["private"] is True  # release.private, applied to the existing repo
    dev = existing["branches"]["dev"]
    assert "model.safetensors" not in dev and dev["NOTES.md"] == b"kept"
    assert "model.safetensors.index.json" in dev
    assert len(existing["commits"]) == 1  # the deletions go with the upload, in one commit
    assert [
        op["value"]["path"] for op in existing["commits"][0]["operations"] if op["key"] == "deletedFile"
    ] == ["model.safetensors"]
    # upload_folder listed the branch to match delete_patterns against it
    assert ("GET", f"/api/models/{REPO}/tree/dev") in {(method, path) for method, path, _ in hub.requests}


@pytest.mark.parametrize("checkout", ["git branch", "DVC experiment", "baseline of an experiment"])
def test_without_release_experiment_the_run_is_named_after_its_branch_or_dvc_experiment(
    checkout: str, project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["release"]["experiment"] = None
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(project, "commit", "-qam", "no release.experiment")
    if checkout == "git branch":
        git(project, "checkout", "-qb", "longer-replies")
        expected = "longer-replies"
    else:
        run(project, sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "trim-150")
        expected = git(project, "rev-parse", "--abbrev-ref", "HEAD").strip()  # an experiment based on it
    if checkout == "DVC experiment":
        # `dvc exp branch` makes a branch of an experiment's commit: the card names the experiment.
        run(project, sys.executable, "-m", "dvc", "exp", "branch", "trim-150", "from-exp")
        git(project, "checkout", "-q", "from-exp")
        expected = "trim-150"
    commit = git(project, "rev-parse", "HEAD").strip()

    status, out, err = run_release(capsys, monkeypatch, "--dry-run")

    assert status == 0, err
    assert f'"Part 2/2 of {expected}, git {commit}"' in out
    assert f"**{expected}, part 2/2**" in Path("release/README.md").read_text()


def test_a_hub_error_is_one_line(
    project: Path, hub: ThreadingHTTPServer, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.token = "hf_the_token_the_hub_expects"

    status, out, err = run_release(capsys, monkeypatch)

    assert (status, err) == (
        1,
        f"error: release: pushing to {REPO} failed: Client error '401 Unauthorized' for url "
        f"'{hub.url}/api/repos/create': Invalid credentials in Authorization header; "
        "check that the token may write to acme\n",
    )
    assert TOKEN not in out
