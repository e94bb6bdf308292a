"""Several ranks for real (chatmill/ranks.py): a part as two CPU processes through the DeepSpeed
launcher (gloo), the code path of several GPUs. Against one rank: the same weights up to reduction
order; every training sequence seen exactly once. A SIGKILLed rank: one line naming it and the last
checkpoint; the re-run resumes to the uninterrupted two-rank weights, bitwise. A rank that raises:
every rank ends, soon. The rank count changing between parts: part N loads part N-1's ZeRO-1 state
written at the other world size, Adam's moments and step as a single rank has them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, write_workspace
from safetensors.torch import load_file
from test_train_resume import TRAIN, packed_shard

from chatmill.io import read_json
from chatmill.ranks import failed_rank, launch_command
from chatmill.shards import save_shard
from chatmill.training import accumulation_steps, micro_batches

SCRIPT = ROOT / "stages" / "train.py"
STEPS, SAVE_EVERY = 12, 5
# The largest difference between the weights of one rank and of two, after 12 AdamW steps in fp32:
# both sum the same gradients, two ranks in another order (an all-reduce of two halves), which moves
# the last bits; Adam divides by the square root of the second moment, so a weight can move by up to
# ~lr per step where a gradient is near zero. Measured bitwise equal here (one thread a rank); 1e-5
# leaves room for other machines, and a rank
# that trained on other rows (or on every row twice) misses it by orders of magnitude.
WEIGHTS_TOLERANCE = 1e-5


# --- Which rows each rank trains on --------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_every_training_sequence_is_seen_exactly_once_across_ranks(world_size):
    global_batch, micro_batch, steps = 16, 2, 5
    shard = {name: np.arange(steps * global_batch)[:, None].repeat(3, 1) for name in ("input_ids", "labels")}
    shard["position_ids"] = np.zeros_like(shard["input_ids"])
    accumulation = accumulation_steps(global_batch, micro_batch, world_size)
    seen = [
        int(row)
        for step in range(steps)
        for rank in range(world_size)
        for batch in micro_batches(
            shard, step, accumulation, micro_batch, rank, world_size, torch.device("cpu")
        )
        for row in batch["input_ids"][:, 0]
    ]
    assert sorted(seen) == list(range(steps * global_batch))


def test_the_micro_batches_of_one_step_are_the_same_rows_for_any_world_size():
    """Each micro batch holds the same rows whether one rank takes them in turn or two side by
    side: only the order of summing gradients differs."""
    shard = {name: np.arange(32)[:, None].repeat(3, 1) for name in ("input_ids", "labels", "position_ids")}

    def groups(world_size):
        accumulation = accumulation_steps(16, 2, world_size)
        return sorted(
            tuple(batch["input_ids"][:, 0].tolist())
            for rank in range(world_size)
            for batch in micro_batches(shard, 1, accumulation, 2, rank, world_size, torch.device("cpu"))
        )

    assert groups(1) == groups(2) == groups(4)


# --- The launcher, and how a failure is told ------------------------------------------------------


def test_launch_command_for_gpus_cpu_ranks_and_nodes(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    train = {"gpus": 4, "cpu_ranks": 1, "hostfile": None}
    command = launch_command(train, part=3, script=SCRIPT)
    assert command[:5] == [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--no_local_rank",
        "--log_level",
    ]
    assert command[command.index("--num_gpus") + 1] == "4" and int(
        command[command.index("--master_port") + 1]
    )
    assert command[-3:] == [str(SCRIPT), "--part", "3"]
    cpu = launch_command({**train, "gpus": 0, "cpu_ranks": 2}, part=1, script=SCRIPT)
    assert cpu[cpu.index("--num_gpus") + 1] == "2"  # the launcher's process count, on the CPU too
    nodes = launch_command({**train, "gpus": 0, "hostfile": "hostfile"}, part=1, script=SCRIPT)
    assert nodes[nodes.index("--hostfile") + 1] == "hostfile" and "--num_gpus" not in nodes
    assert launch_command({**train, "gpus": 0}, part=1, script=SCRIPT) is None  # one CPU rank: here
    assert launch_command({**train, "gpus": 1}, part=1, script=SCRIPT) is None  # one GPU: here
    monkeypatch.setenv("LOCAL_RANK", "0")  # already a launched rank
    assert launch_command(train, part=1, script=SCRIPT) is None


def test_the_failed_rank_is_the_one_with_an_error_of_its_own_or_the_one_killed():
    lost = "RuntimeError: [gloo] Connection closed by peer [127.0.0.1]:5"
    raised = [
        {"rank": 0, "state": "failed", "error": lost, "time": 2.0},
        {"rank": 1, "state": "failed", "error": "IndexError: index out of range in self", "time": 3.0},
    ]
    assert failed_rank(raised) == "rank 1 failed: IndexError: index out of range in self"
    killed = [{"rank": 0, "state": "failed", "error": lost, "time": 2.0}, {"rank": 1, "state": "running"}]
    assert failed_rank(killed) == "rank 1 ended without an error of its own (killed, or out of memory)"
    stopped = [{"rank": 0, "state": "stopped", "time": 2.0}, {"rank": 1, "state": "running"}]
    assert failed_rank(stopped) == "rank 1 ended without an error of its own (killed, or out of memory)"


# --- Real ranks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer) -> Path:
    """models/base, a 12-step part 1, an eval split and the default params with TRAIN's."""
    from chatmill.modeling import scratch_model

    folder = tmp_path_factory.mktemp("ranks")
    scratch = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    scratch |= {"num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32}
    scratch_model(scratch, tiny_tokenizer, seed=0).save_pretrained(folder / "models/base")
    tiny_tokenizer.save_pretrained(folder / "models/base")
    rng = np.random.default_rng(0)
    save_shard(
        folder / "data/shards/part-01", packed_shard(rng, STEPS * TRAIN["global_batch"], len(tiny_tokenizer))
    )
    save_shard(folder / "data/shards/eval", packed_shard(rng, 7, len(tiny_tokenizer)))
    return folder


def workspace(files: Path, target: Path, **train) -> Path:
    subprocess.run(["cp", "-a", f"{files}/.", str(target)], check=True)
    write_workspace(target, {"train": {**TRAIN, "save_every": SAVE_EVERY, **train}})
    return target


def start_part(folder: Path, part: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per rank: a fixed summing order
    command = [sys.executable, str(SCRIPT), "--part", str(part)]
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_part(folder: Path, part: int = 1) -> str:
    process = start_part(folder, part)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return out


def weights(folder: Path, part: int = 1) -> dict[str, torch.Tensor]:
    return load_file(folder / f"models/part-{part:02d}/model.safetensors")


@pytest.fixture(scope="module")
def one_rank(files, tmp_path_factory) -> Path:
    folder = workspace(files, tmp_path_factory.mktemp("one"))
    run_part(folder)
    return folder


@pytest.fixture(scope="module")
def two_ranks(files, tmp_path_factory) -> tuple[Path, str]:
    folder = workspace(files, tmp_path_factory.mktemp("two"), cpu_ranks=2)
    return folder, run_part(folder)


@pytest.mark.e2e
def test_two_ranks_end_with_the_weights_of_one_up_to_summing_order(one_rank, two_ranks):
    folder, output = two_ranks
    assert read_json(folder / "models/part-01/train_state.json")["world_size"] == 2
    assert read_json(one_rank / "models/part-01/train_state.json")["world_size"] == 1
    assert output.count("train-part1: global step 12,") == 1  # rank 0 speaks; rank 1 does not
    one, two = weights(one_rank), weights(folder)
    base = load_file(folder / "models/base/model.safetensors")
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=WEIGHTS_TOLERANCE, rtol=0)
        assert not torch.equal(one[name], base[name]) or "norm" in name  # it trained
    assert (folder / "models/part-01/resume/final/zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()
    assert not (folder / "checkpoints").exists() or not any((folder / "checkpoints").iterdir())


@pytest.mark.e2e
def test_a_killed_rank_is_named_and_the_rerun_resumes_to_the_same_weights(files, two_ranks, tmp_path):
    folder = workspace(files, tmp_path / "killed", cpu_ranks=2)
    process = start_part(folder)
    checkpoint, status = (
        folder / f"checkpoints/part-01/step-{SAVE_EVERY:06d}",
        folder / "checkpoints/ranks-part-01",
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the end"
        time.sleep(0.05)
    pid = read_json(status / "rank-00001.json")["pid"]
    os.kill(pid, signal.SIGKILL)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 1
    last = err.strip().splitlines()[-1]
    newest = sorted(path.name for path in (folder / "checkpoints/part-01").glob("step-*"))[-1]
    assert last == (
        "error: train-part1: rank 1 ended without an error of its own (killed, or out of memory); "
        f"the last checkpoint is checkpoints/part-01/{newest}: `dvc repro train-part1` resumes from it"
    )
    assert not (folder / "models/part-01").exists()

    output = run_part(folder)
    assert "train-part1: resuming from checkpoints/part-01/step-0000" in output
    reference = weights(two_ranks[0])
    for name, tensor in weights(folder).items():
        assert torch.equal(tensor, reference[name]), name


@pytest.mark.e2e
def test_a_rank_that_raises_ends_every_rank_soon_with_one_line(files, tmp_path):
    folder = workspace(files, tmp_path / "raises", cpu_ranks=2)
    shard = folder / "data/shards/part-01/input_ids.npy"
    ids = np.load(shard)
    ids[3 * TRAIN["global_batch"] + 2, 5] = 10_000  # step 3, rank 1's rows: no such token
    np.save(shard, ids)
    started = time.monotonic()
    process = start_part(folder)
    out, err = process.communicate(timeout=300)
    assert time.monotonic() - started < 240
    assert process.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: train-part1: rank 1 failed: IndexError")
    assert "no checkpoint was written yet: `dvc repro train-part1` starts the part again" in last


def optimizer_state(folder: Path, part: int) -> dict[str, torch.Tensor]:
    """Part N's saved ZeRO-1 state as one rank holds it: every rank's partition of the fp32 master
    weights and Adam's moments, end to end (without the padding that makes them divide evenly)."""
    resume = folder / f"models/part-{part:02d}/resume/final"
    files = sorted(
        resume.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=lambda p: int(p.name.split("_")[3])
    )
    pieces: dict[str, list[torch.Tensor]] = {"fp32": [], "exp_avg": [], "exp_avg_sq": []}
    steps = set()
    for path in files:
        state = torch.load(path, weights_only=False, map_location="cpu")["optimizer_state_dict"]
        pieces["fp32"].append(state["single_partition_of_fp32_groups"][0])
        adam = state["base_optimizer_state"]["state"][0]
        pieces["exp_avg"].append(adam["exp_avg"])
        pieces["exp_avg_sq"].append(adam["exp_avg_sq"])
        steps.add(int(adam["step"]))
    size = sum(
        tensor.numel() for tensor in load_file(folder / f"models/part-{part:02d}/model.safetensors").values()
    )
    return {name: torch.cat(tensors)[:size] for name, tensors in pieces.items()} | {
        "step": torch.tensor(steps.pop())
    }


def continue_at(source: Path, target: Path, cpu_ranks: int) -> Path:
    """Part 2 on `cpu_ranks` ranks after `source`'s part 1, its shard too short for a step: what it
    writes is the state it loaded."""
    subprocess.run(["cp", "-a", f"{source}/.", str(target)], check=True)
    write_workspace(target, {"train": {**TRAIN, "save_every": SAVE_EVERY, "cpu_ranks": cpu_ranks}})
    rng = np.random.default_rng(1)
    save_shard(target / "data/shards/part-02", packed_shard(rng, 1, 300))
    output = run_part(target, part=2)
    assert "converting its state to DeepSpeed's universal checkpoint" in output
    assert read_json(target / "models/part-02/train_state.json")["world_size"] == cpu_ranks
    return target


@pytest.mark.e2e
@pytest.mark.parametrize("before, after", [(1, 2), (2, 1)])
def test_part_n_loads_the_state_part_n_minus_1_wrote_at_another_world_size(
    one_rank, two_ranks, tmp_path, before, after
):
    source = one_rank if before == 1 else two_ranks[0]
    loaded = optimizer_state(continue_at(source, tmp_path / "next", after), 2)
    written = optimizer_state(source, 1)
    assert int(loaded["step"]) == int(written["step"]) == STEPS
    for name in ("fp32", "exp_avg", "exp_avg_sq"):
        assert torch.equal(loaded[name], written[name]), name
    assert read_json(tmp_path / "next/models/part-02/train_state.json")["global_step"] == STEPS


def test_deepspeed_ops_are_built_once_per_environment_and_a_killed_build_blocks_nothing(
    tmp_path, monkeypatch
):
    from chatmill.ranks import STALE_BUILD_S, use_environment_extensions

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    use_environment_extensions()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # the user's choice stands
    stale, fresh = tmp_path / "py311_cpu/old_op/lock", tmp_path / "py311_cpu/new_op/lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    os.utime(stale, (time.time() - STALE_BUILD_S - 60,) * 2)  # left by a build killed long ago
    use_environment_extensions()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)
    assert not stale.exists() and fresh.exists()  # a build under way keeps its lock
