"""A stage killed with SIGKILL midway leaves no half-written output where DVC would look, and a
re-run produces outputs byte-identical to an uninterrupted run.

Two ways to kill a stage midway. kill_midway: as soon as its hidden temporary output exists, after
letting it write a little (the data stages, on inputs large enough to take a second). kill_at: for
stages whose outputs are written in milliseconds (base-model, sample-eval), the stage runs under a
Python audit hook that stops it at a chosen file event (the open of a file inside its temporary
output, or the rename that puts a temporary output in place) until the test SIGKILLs it there.
"""

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY_SCRATCH, make_conversation, write_workspace
from test_packing import run_shard

from chatmill.io import sha256_file, write_parquet
from chatmill.schema import CONVERSATION_SCHEMA
from chatmill.shards import IGNORE_INDEX, save_shard

SOURCES = {  # the synthetic conversations' two sources
    "logs": {"uri": "logs.jsonl", "format": "pippa", "trim": True, "weight": 0.7},
    "fresh": {"uri": "fresh.jsonl", "format": "sharegpt", "trim": True, "weight": 0.3},
}
WORDS = "the lantern light flickers as she sets down two mugs of cider and smiles at the road".split()
# Run a stage script, stopped at the first audit event EVENT whose path matches PATTERN: it writes
# MARKER and sleeps there until killed. The stage itself runs unchanged, as `python stages/X.py`.
PAUSE_AT = """
import os, re, runpy, sys, time
script, event, pattern, marker = sys.argv[1:5]
def pause(name, args):
    if name == event and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if re.search(pattern, os.fsdecode(args[0])):
            open(marker, "w").close()
            time.sleep(600)
sys.argv = [script]
sys.addaudithook(pause)
runpy.run_path(script, run_name="__main__")
"""


def output_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def stage_script(stage: str) -> str:
    return str(ROOT / "stages" / f"{stage}.py")


def run(workdir: Path, stage: str) -> None:
    result = subprocess.run(
        [sys.executable, stage_script(stage)], cwd=workdir, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def temporaries(output: Path) -> list[Path]:
    """What a stage writing `output` has in progress (chatmill.io: a hidden .NAME.tmp-PID sibling)."""
    return list(output.parent.glob(f".{output.name}.tmp-*"))


def kill_midway(workdir: Path, stage: str, output: Path) -> list[Path]:
    """Start the stage, SIGKILL it once its temporary output exists and it has written a little;
    check nothing leaked where DVC looks. Returns the temporary output the kill left behind (proof
    that the kill landed midway: a stage that finishes or fails cleans it up)."""
    process = subprocess.Popen(
        [sys.executable, stage_script(stage)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not temporaries(output):
        assert process.poll() is None, f"{stage} finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.2)  # let it write a little
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists(), "a killed stage must not leave its output where DVC looks"
    left = temporaries(output)
    assert left, f"{stage} was not killed midway: no temporary output left"
    return left


def kill_at(workdir: Path, stage: str, event: str, pattern: str) -> None:
    """Run the stage until it reaches audit event `event` ("open" or "os.rename") on a path matching
    `pattern`, and SIGKILL it there."""
    marker = workdir.parent / f"{workdir.name}.paused"
    marker.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AT, stage_script(stage), event, pattern, str(marker)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"{stage} ended before {event} {pattern}:\n{process.stderr.read().decode()[-3000:]}")
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def rerun_matches(workdir: Path, stage: str, output: Path, uninterrupted: dict[str, str]) -> None:
    """Re-run the stage: its output equals the uninterrupted run's, and no temporary is left."""
    run(workdir, stage)
    assert output_hashes(output) == uninterrupted
    assert not temporaries(output)


def conversation(i: int) -> dict:
    """Conversation i of the synthetic data: 3 turns of a reply 4..53 words long, two sources."""
    reply = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(4 + (i * 7919) % 50))
    return make_conversation(
        f"c{i:06d}", ("logs", "fresh")[i % 2], bot_replies=(reply,) * 3, user=f"Tell me about the road, #{i}."
    )


@pytest.fixture(scope="module")
def many_conversations(tmp_path_factory) -> Path:
    """50,000 short conversations (0.5 MB of parquet): length-trim and mix take about a second."""
    path = tmp_path_factory.mktemp("data") / "conversations.parquet"
    write_parquet(path, CONVERSATION_SCHEMA, (conversation(i) for i in range(50_000)))
    return path


def data_workdir(folder: Path, input_dir: str, conversations: Path) -> Path:
    write_workspace(folder, {"sources": SOURCES}, replace=True)
    (folder / input_dir).mkdir(parents=True)
    shutil.copy(conversations, folder / input_dir / "conversations.parquet")
    return folder


@pytest.fixture
def sample_workdir(tmp_path) -> Path:
    shutil.copytree(ROOT / "data/sources", tmp_path / "data/sources", ignore=shutil.ignore_patterns("*.py"))
    write_workspace(tmp_path)
    run(tmp_path, "fetch")
    return tmp_path


def test_killed_clean_reruns_to_identical_outputs(sample_workdir):
    output = sample_workdir / "data/clean"
    run(sample_workdir, "clean")
    uninterrupted = output_hashes(output)
    shutil.rmtree(output)
    kill_midway(sample_workdir, "clean", output)
    rerun_matches(sample_workdir, "clean", output, uninterrupted)


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
    assert not temporaries(output)


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def test_killed_length_trim_reruns_to_identical_outputs(tmp_path, many_conversations):
    workdir = data_workdir(tmp_path, "data/clean", many_conversations)
    output, plot = workdir / "data/trimmed", workdir / "reports/length-trim.csv"
    run(workdir, "length_trim")
    uninterrupted, uninterrupted_plot = output_hashes(output), plot.read_bytes()
    assert 0 < pq_rows(output / "conversations.parquet") < 50_000  # it trims: the data is not trivial
    shutil.rmtree(output)
    plot.unlink()
    [left] = kill_midway(workdir, "length_trim", output)
    assert not (left / "stats.json").exists()  # written last: killed while trimming
    assert not plot.exists() and not temporaries(plot)  # the plot is written after the data
    rerun_matches(workdir, "length_trim", output, uninterrupted)
    assert plot.read_bytes() == uninterrupted_plot


def test_killed_mix_reruns_to_identical_outputs(tmp_path, many_conversations):
    workdir = data_workdir(tmp_path, "data/trimmed", many_conversations)
    output = workdir / "data/mixed"
    run(workdir, "mix")
    uninterrupted = output_hashes(output)
    assert pq_rows(output / "conversations.parquet") == 50_000  # as large as its input, re-weighted
    shutil.rmtree(output)
    [left] = kill_midway(workdir, "mix", output)
    assert not (left / "stats.json").exists()  # written last: killed while shuffling
    rerun_matches(workdir, "mix", output, uninterrupted)


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory, tiny_scratch_sizes) -> Path:
    """The base-model stage's input (300 conversations in data/clean), params for a tiny model."""
    folder = tmp_path_factory.mktemp("base-workspace")
    write_workspace(folder, {"model": {"scratch": tiny_scratch_sizes}})
    (folder / "data/clean").mkdir(parents=True)
    rows = (conversation(i) for i in range(300))
    write_parquet(folder / "data/clean/conversations.parquet", CONVERSATION_SCHEMA, rows)
    return folder


@pytest.fixture(scope="module")
def tiny_scratch_sizes() -> dict:
    return TINY_SCRATCH | {"max_position_embeddings": 256}


@pytest.fixture(scope="module")
def base_uninterrupted(base_workspace, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("base-uninterrupted")
    shutil.copytree(base_workspace, folder, dirs_exist_ok=True)
    run(folder, "base_model")
    hashes = output_hashes(folder / "models/base")
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= hashes.keys()
    return hashes


@pytest.mark.parametrize(
    "event, pattern, complete",
    [
        # the tokenizer is in the temporary folder; the model's files are about to be written
        ("open", r"models/\.base\.tmp-\d+/config\.json$", False),
        # every file is in the temporary folder, which is about to be renamed into place
        ("os.rename", r"models/\.base\.tmp-\d+$", True),
    ],
    ids=["writing", "before-rename"],
)
def test_killed_base_model_reruns_to_identical_outputs(
    base_workspace, base_uninterrupted, tmp_path, event, pattern, complete
):
    workdir = tmp_path / "work"
    shutil.copytree(base_workspace, workdir)
    output = workdir / "models/base"
    kill_at(workdir, "base_model", event, pattern)
    assert not output.exists(), "a killed stage must not leave its output where DVC looks"
    [left] = temporaries(output)  # proof the kill landed while the output was being written
    if complete:
        assert output_hashes(left) == base_uninterrupted
    else:
        assert "tokenizer.json" in output_hashes(left) and not (left / "model.safetensors").exists()
    rerun_matches(workdir, "base_model", output, base_uninterrupted)


EVAL_OUTPUTS = ("reports/samples.jsonl", "reports/sample-eval.html", "metrics/sample-eval.json")


@pytest.fixture(scope="module")
def eval_workspace(tmp_path_factory, tiny_tokenizer, tiny_scratch_sizes) -> Path:
    """A tiny model as models/base, a small eval shard and a tiny grid: sample-eval in seconds."""
    from chatmill.modeling import scratch_model

    folder = tmp_path_factory.mktemp("eval-workspace")
    eval_params = {
        "model": "models/base",
        "prompts": 2,
        "samples_per_prompt": 2,
        "max_new_tokens": 4,
        "batch_size": 4,
        "grid": [{"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}],
    }
    write_workspace(folder, {"eval": eval_params})
    prompt_sets = folder / "chatmill/prompts/assistant-v1.yaml"  # eval.prompt_sets, as committed
    prompt_sets.parent.mkdir(parents=True)
    shutil.copy(ROOT / "chatmill/prompts/assistant-v1.yaml", prompt_sets)
    scratch_model(tiny_scratch_sizes, tiny_tokenizer, seed=0).save_pretrained(folder / "models/base")
    tiny_tokenizer.save_pretrained(folder / "models/base")
    rng = np.random.default_rng(0)
    input_ids = rng.integers(3, len(tiny_tokenizer), size=(4, 32))
    labels = np.where(rng.random((4, 32)) < 0.3, IGNORE_INDEX, input_ids)
    positions = np.tile(np.arange(32), (4, 1))
    eval_dir = folder / "data/shards/eval"
    save_shard(eval_dir, {"input_ids": input_ids, "labels": labels, "position_ids": positions})
    write_parquet(
        eval_dir / "conversations.parquet", CONVERSATION_SCHEMA, [conversation(i) for i in range(4)]
    )
    return folder


@pytest.fixture(scope="module")
def eval_uninterrupted(eval_workspace, tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("eval-uninterrupted")
    shutil.copytree(eval_workspace, folder, dirs_exist_ok=True)
    run(folder, "sample_eval")
    return {name: (folder / name).read_bytes() for name in EVAL_OUTPUTS}


@pytest.mark.parametrize("target", EVAL_OUTPUTS, ids=["samples", "report", "metrics"])
def test_killed_sample_eval_never_leaves_a_half_written_output(
    eval_workspace, eval_uninterrupted, tmp_path, target
):
    """sample-eval writes three files, each to a hidden temporary then renamed into place. Killed
    with each one written in full to its temporary but not yet renamed (the step before it in
    place, after the ones before it), every output is absent or complete (byte-identical to the
    uninterrupted run's), the one being written and those after it are absent, and a re-run writes
    all three as an uninterrupted run does."""
    workdir = tmp_path / "work"
    shutil.copytree(eval_workspace, workdir)
    folder, name = target.rsplit("/", 1)
    kill_at(workdir, "sample_eval", "os.rename", rf"(^|/){folder}/\.{re.escape(name)}\.tmp-\d+$")
    present = [output for output in EVAL_OUTPUTS if (workdir / output).exists()]
    assert present == list(EVAL_OUTPUTS[: EVAL_OUTPUTS.index(target)])
    for output in present:
        assert (workdir / output).read_bytes() == eval_uninterrupted[output], f"{output} is half-written"
    # the one being placed: complete in its hidden temporary, which is all the kill left of it
    assert [path.read_bytes() for path in temporaries(workdir / target)] == [eval_uninterrupted[target]]
    run(workdir, "sample_eval")
    assert {output: (workdir / output).read_bytes() for output in EVAL_OUTPUTS} == eval_uninterrupted
