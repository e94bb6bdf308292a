"""Crash safety and reporting of a training part, on a tiny model in a temporary workspace.

The part runs as `python stages/train.py --part 1`, as DVC runs it. One run goes through
uninterrupted; another is SIGKILLed after its first intermediate checkpoint and re-run. On the CPU
in fp32 with one thread, the resumed run's final weights equal the uninterrupted run's bitwise, and
the re-run provably resumed: it says so, and it ran only the steps after the checkpoint.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, write_workspace
from safetensors.torch import load_file

from chatmill.io import read_json, write_json
from chatmill.modeling import scratch_model
from chatmill.shards import IGNORE_INDEX, load_shard, save_shard

TRAIN = {
    "parts": 2,
    "global_batch": 4,
    "micro_batch": 2,
    "lr": 1e-3,
    "warmup_steps": 3,
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "zero_stage": 1,
    "bf16": False,
    "seed": 0,
    "gpus": 0,
    "hostfile": None,
    "save_every": 5,
    "gradient_checkpointing": False,
    "compile": False,
    "fused_optimizer": False,
    "peak_tflops": 0.1,
}
STEPS, SEQ_LEN = 40, 32


def packed_shard(rng: np.random.Generator, sequences: int, vocab: int) -> dict[str, np.ndarray]:
    """Two documents per row, position ids restarting at the second; a third of the labels off."""
    input_ids = rng.integers(3, vocab, size=(sequences, SEQ_LEN))
    labels = np.where(rng.random((sequences, SEQ_LEN)) < 0.33, IGNORE_INDEX, input_ids)
    half = SEQ_LEN // 2
    position_ids = np.tile(np.concatenate([np.arange(half), np.arange(SEQ_LEN - half)]), (sequences, 1))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


@pytest.fixture(scope="module")
def workspace_files(tmp_path_factory, tiny_tokenizer) -> Path:
    """params.yaml, dvc.yaml, models/base and data/shards for a 40-step part 1 of a one-layer model."""
    folder = tmp_path_factory.mktemp("workspace")
    scratch = {
        "vocab_size": 300,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": SEQ_LEN,
    }
    model = scratch_model(scratch, tiny_tokenizer, seed=0)
    model.save_pretrained(folder / "models/base")
    tiny_tokenizer.save_pretrained(folder / "models/base")
    rng = np.random.default_rng(0)
    vocab = len(tiny_tokenizer)
    save_shard(folder / "data/shards/part-01", packed_shard(rng, STEPS * TRAIN["global_batch"], vocab))
    save_shard(folder / "data/shards/eval", packed_shard(rng, 7, vocab))  # not a multiple of the batch
    write_workspace(folder, {"train": TRAIN})
    return folder


def workspace(files: Path, target: Path) -> Path:
    subprocess.run(["cp", "-a", f"{files}/.", str(target)], check=True)
    return target


def train_command(part: int = 1) -> list[str]:
    return [sys.executable, str(ROOT / "stages/train.py"), "--part", str(part)]


def train_env() -> dict[str, str]:
    # One thread: CPU kernels then sum in a fixed order, and the shared machine stays responsive.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_part(folder: Path, part: int = 1) -> str:
    """Run the part to the end; returns its stdout."""
    result = subprocess.run(train_command(part), cwd=folder, env=train_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def resume_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("train-part1: resuming from ")]


def tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


@dataclass
class Run:
    folder: Path
    output: str  # the (last) run's stdout


@dataclass
class Resumed(Run):
    killed_at: int  # the step of the newest checkpoint the kill left
    logged: int  # the last step the killed run had logged
    killed_tokens_per_s: dict[int, str]  # the killed run's tokens/s log, step -> value as written


@pytest.fixture(scope="module")
def uninterrupted(workspace_files, tmp_path_factory) -> Run:
    folder = workspace(workspace_files, tmp_path_factory.mktemp("uninterrupted"))
    return Run(folder, run_part(folder))


def last_logged_step(folder: Path) -> int:
    """The last step in the part's DVCLive lr log (0 before the first), read while it is written."""
    lr_log = folder / "dvclive/part-01/plots/metrics/train/lr.tsv"
    rows = lr_log.read_text().splitlines()[1:] if lr_log.exists() else []
    complete = [row for row in rows if row.count("\t") == 1 and row.split("\t")[1]]
    return int(complete[-1].split("\t")[0]) if complete else 0


def logged_values(path: Path) -> dict[int, str]:
    """A DVCLive metric log's complete rows, step -> value as written (a row cut by a kill may end it)."""
    rows = path.read_text().splitlines()[1:] if path.exists() else []
    return {int(row.split("\t")[0]): row.split("\t")[1] for row in rows if row.count("\t") == 1}


@pytest.fixture(scope="module")
def resumed(workspace_files, tmp_path_factory) -> Resumed:
    """Kill part 1 with SIGKILL between checkpoints, after the first one, then run it again."""
    folder = workspace(workspace_files, tmp_path_factory.mktemp("killed"))
    save_every = TRAIN["save_every"]
    process = subprocess.Popen(
        train_command(), cwd=folder, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        step = last_logged_step(folder)
        if step > save_every and step % save_every:  # steps after the first checkpoint will be lost
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, f"the part ended before it was killed:\n{stderr[-3000:]}"
    assert not (folder / "models/part-01").exists()
    logged = last_logged_step(folder)
    killed_at = int(sorted((folder / "checkpoints/part-01").glob("step-*"))[-1].name.split("-")[1])
    assert save_every <= killed_at <= logged < STEPS
    # Measured wall time per step: a re-run that computes a step again logs another value for it.
    killed_tokens_per_s = logged_values(folder / "dvclive/part-01/plots/metrics/train/tokens_per_s.tsv")
    assert set(range(1, logged)) <= killed_tokens_per_s.keys()
    return Resumed(folder, run_part(folder), killed_at, logged, killed_tokens_per_s)


def test_the_rerun_resumes_at_the_checkpoint_and_runs_only_the_remaining_steps(uninterrupted, resumed):
    """A deterministic restart from scratch would end with the same weights and logs; this tells
    them apart. The re-run says where it resumed, and of its tokens/s log (wall time, which a step
    run twice never repeats exactly) the rows up to the checkpoint are the killed run's, restored,
    and every later row was measured by the re-run: it ran exactly STEPS - killed_at optimizer
    steps (a restart from scratch would run all STEPS and log new values from step 1)."""
    checkpoint = f"checkpoints/part-01/step-{resumed.killed_at:06d}"
    assert resume_lines(resumed.output) == [
        f"train-part1: resuming from {checkpoint} at step {resumed.killed_at} of {STEPS}"
    ]
    assert resume_lines(uninterrupted.output) == []
    rerun = logged_values(resumed.folder / "dvclive/part-01/plots/metrics/train/tokens_per_s.tsv")
    assert sorted(rerun) == list(range(1, STEPS + 1))
    restored = [step for step, value in rerun.items() if resumed.killed_tokens_per_s.get(step) == value]
    executed = [step for step in rerun if step not in restored]
    assert restored == list(range(1, resumed.killed_at + 1))
    assert executed == list(range(resumed.killed_at + 1, STEPS + 1))
    assert len(executed) == STEPS - resumed.killed_at
    # and the steps the killed run logged after its checkpoint were run again, not kept
    assert set(range(resumed.killed_at + 1, resumed.logged)) <= set(executed)


def test_killed_part_resumes_to_the_same_weights_bitwise(uninterrupted, resumed):
    expected = load_file(uninterrupted.folder / "models/part-01/model.safetensors")
    actual = load_file(resumed.folder / "models/part-01/model.safetensors")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name
    assert read_json(resumed.folder / "models/part-01/train_state.json") == read_json(
        uninterrupted.folder / "models/part-01/train_state.json"
    )


def test_resumed_logs_are_the_uninterrupted_logs(uninterrupted, resumed):
    for metric in ("loss", "lr", "grad_norm", "tokens_seen"):
        expected = tsv(uninterrupted.folder / f"dvclive/part-01/plots/metrics/train/{metric}.tsv")
        assert [int(step) for step, _ in expected] == list(range(1, STEPS + 1))
        assert tsv(resumed.folder / f"dvclive/part-01/plots/metrics/train/{metric}.tsv") == expected, metric


def test_checkpoints_are_removed_once_the_part_is_complete(resumed):
    assert not (resumed.folder / "checkpoints/part-01").exists()
    assert not list((resumed.folder / "models").glob(".*"))


def test_a_checkpoint_from_other_params_or_inputs_is_not_resumed(uninterrupted, workspace_files, tmp_path):
    folder = workspace(workspace_files, tmp_path)
    # e.g. written before `dvc exp run -S train.lr=...`; the new run writes a step-000005 of its own
    for step in (5, 35):
        stale = folder / f"checkpoints/part-01/step-{step:06d}"
        stale.mkdir(parents=True)
        state = {"fingerprint": "other", "step": step, "tokens_seen": 128 * step, "first_loss": 9.0}
        write_json(stale / "state.json", state)
    output = run_part(folder)
    assert (
        "train-part1: not resuming from checkpoints/part-01/step-000035: params, GPUs or inputs have changed"
        in output.splitlines()
    )
    assert resume_lines(output) == []
    assert not (folder / "checkpoints/part-01").exists()
    assert read_json(folder / "models/part-01/train_state.json") == read_json(
        uninterrupted.folder / "models/part-01/train_state.json"
    )


def test_a_part_reports_per_step_and_held_out_metrics(uninterrupted):
    live = uninterrupted.folder / "dvclive/part-01/plots/metrics"
    for metric in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        values = [float(value) for _, value in tsv(live / f"train/{metric}.tsv")]
        assert len(values) == STEPS and all(np.isfinite(values)) and min(values) > 0, metric
    state = read_json(uninterrupted.folder / "models/part-01/train_state.json")
    [(step, eval_loss)] = tsv(live / "eval/loss.tsv")
    assert int(step) == state["global_step"] == STEPS
    assert float(eval_loss) == pytest.approx(state["eval_loss"], abs=1e-6)
    assert read_json(uninterrupted.folder / "dvclive/part-01/metrics.json")["eval/loss"] == state["eval_loss"]
    assert state["eval_loss"] == pytest.approx(reference_eval_loss(uninterrupted.folder), rel=1e-5)


def reference_eval_loss(folder: Path) -> float:
    """The held-out loss recomputed with plain transformers, one sequence at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder / "models/part-01").eval()
    shard = load_shard(folder / "data/shards/eval")
    total, count = 0.0, 0
    with torch.no_grad():
        for row in range(len(shard["input_ids"])):
            batch = {
                name: torch.tensor(rows[row : row + 1], dtype=torch.long) for name, rows in shard.items()
            }
            supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += model(**batch, use_cache=False).loss.item() * supervised  # a cache turns packing off
            count += supervised
    return total / count
