"""A stage killed with SIGKILL midway leaves no half-written output where DVC would look, and a
re-run produces outputs byte-identical to an uninterrupted run."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_shard import run_shard

from chatmill.io import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def output_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def run(workdir: Path, stage: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=workdir, check=True, capture_output=True
    )


def kill_midway(workdir: Path, stage: str, output: Path) -> None:
    """Start the stage, SIGKILL it as soon as its temporary output exists, check nothing leaked."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py")],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(output.parent.glob(f".{output.name}.tmp-*")):
        assert process.poll() is None, f"{stage} finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.2)  # let it write a little
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists(), "a killed stage must not leave its output where DVC looks"


@pytest.fixture
def sample_workdir(tmp_path) -> Path:
    shutil.copytree(ROOT / "data/sources", tmp_path / "data/sources", ignore=shutil.ignore_patterns("*.py"))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    run(tmp_path, "fetch")
    return tmp_path


def test_killed_clean_reruns_to_identical_outputs(sample_workdir):
    output = sample_workdir / "data/clean"
    run(sample_workdir, "clean")
    uninterrupted = output_hashes(output)
    shutil.rmtree(output)
    kill_midway(sample_workdir, "clean", output)
    run(sample_workdir, "clean")
    assert output_hashes(output) == uninterrupted
    assert not list(output.parent.glob(".clean.tmp-*"))


def test_killed_shard_reruns_to_identical_outputs(
    tmp_path, monkeypatch, tiny_tokenizer, tiny_scratch, conversation_factory
):
    replies = ("The lantern light flickers as she sets down two mugs of cider.",) * 6
    conversations = [
        conversation_factory(f"c{i:05d}", bot_replies=replies, user=f"Tell me about the road, #{i}.")
        for i in range(3000)
    ]
    monkeypatch.chdir(tmp_path)
    uninterrupted = run_shard(tmp_path, 1, tiny_tokenizer, tiny_scratch, conversations)
    output = tmp_path / "data/shards"
    shutil.rmtree(output)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["shard"]["workers"] == 1
    kill_midway(tmp_path, "shard", output)
    run(tmp_path, "shard")
    assert {f"data/shards/{name}": digest for name, digest in output_hashes(output).items()} == uninterrupted
