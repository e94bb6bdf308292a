"""train-partN: one part of training through DeepSpeed, continuing exactly where part N-1 stopped.

    python stages/train.py --part N

Part 1 starts from models/base; part N from models/part-(N-1): its weights, optimizer state and
global step (DeepSpeed checkpoint in resume/), so the LR schedule continues and warmup is not
repeated. Writes models/part-NN/ (HF safetensors + tokenizer, resume/, train_state.json) and
DVCLive logs in dvclive/part-NN/. Effective batch = micro_batch x accumulation x world size.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.io import read_json, remove, write_json
from chatmill.params import load_params, require
from chatmill.shards import load_shard, part_name

BASE_DIR = Path("models/base")
SHARDS_DIR = Path("data/shards")
CHECKPOINT_TAG = "final"


def model_dir(part: int) -> Path:
    return BASE_DIR if part == 0 else Path("models") / part_name(part)


def learning_rate(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warmup over the first `warmup_steps` optimizer steps of the whole run, then constant.
    `step` counts from 0 at the first step of part 1, so a later part never warms up again."""
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ChatmillError(
            f"params.yaml: train.global_batch={global_batch} is not a multiple of train.micro_batch x GPUs "
            f"= {micro_batch} x {world_size}; change one of them"
        )
    return global_batch // per_step


def deepspeed_config(train: dict, accumulation: int) -> dict:
    return {
        "train_batch_size": train["global_batch"],
        "train_micro_batch_size_per_gpu": train["micro_batch"],
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": train["grad_clip"],
        "bf16": {"enabled": train["bf16"]},
        "zero_optimization": {"stage": train["zero_stage"]},
        "steps_per_print": 2**31 - 1,  # progress is ours to report
    }


def launch_command(train: dict, part: int) -> list[str] | None:
    """The DeepSpeed launcher command for several GPUs or nodes; None to run in this process."""
    gpus, hostfile = train["gpus"], train["hostfile"]
    if os.environ.get("LOCAL_RANK") is not None or (gpus <= 1 and not hostfile):
        return None
    command = ["deepspeed"]
    if hostfile:
        command += ["--hostfile", str(hostfile)]
    if gpus:
        command += ["--num_gpus", str(gpus)]
    return command + [__file__, "--part", str(part)]


def validate_train(train: dict) -> dict:
    for key, kind in (
        ("parts", int),
        ("global_batch", int),
        ("micro_batch", int),
        ("lr", float),
        ("warmup_steps", int),
        ("weight_decay", float),
        ("grad_clip", float),
        ("zero_stage", int),
        ("bf16", bool),
        ("seed", int),
        ("gpus", int),
    ):
        value = require(train, key, "train", (int, float) if kind is float else kind)
        if value < 0 or (key in ("parts", "global_batch", "micro_batch") and value == 0):
            raise ChatmillError(f"params.yaml: train.{key}={value} must be positive")
    if train["zero_stage"] not in (0, 1, 2, 3):
        raise ChatmillError(f"params.yaml: train.zero_stage={train['zero_stage']}; use 0, 1, 2 or 3")
    require(train, "hostfile", "train")
    return train


def single_process_environment() -> None:
    """torch.distributed needs a rendezvous even for one process on a CPU."""
    if "LOCAL_RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def micro_batches(
    shard: dict[str, np.ndarray],
    step: int,
    accumulation: int,
    micro_batch: int,
    rank: int,
    world_size: int,
    device: torch.device,
):
    """The micro batches of one optimizer step for this rank: rows in shard order."""
    global_batch = micro_batch * accumulation * world_size
    for micro in range(accumulation):
        start = step * global_batch + (micro * world_size + rank) * micro_batch
        rows = slice(start, start + micro_batch)
        yield {
            name: torch.from_numpy(np.asarray(array[rows], dtype=np.int64)).to(device)
            for name, array in shard.items()
        }


def run_part(part: int, train: dict) -> dict:
    import deepspeed
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dvclive import Live

    previous, out = model_dir(part - 1), model_dir(part)
    shard_dir = SHARDS_DIR / part_name(part)
    if not (shard_dir / "input_ids.npy").exists():
        raise ChatmillError(
            f"train-part{part}: {shard_dir} not found; run `dvc repro shard` (train.parts >= {part}?)"
        )
    if not previous.exists():
        raise ChatmillError(f"train-part{part}: {previous} not found; run `dvc repro train-part{part - 1}`")

    deepspeed.init_distributed()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    accumulation = accumulation_steps(train["global_batch"], train["micro_batch"], world_size)
    torch.manual_seed(train["seed"] + part)

    model = AutoModelForCausalLM.from_pretrained(previous, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(train, accumulation)
    )
    tokens_seen = 0
    if part > 1:  # continue part N-1's optimizer, fp32 master weights and global step
        engine.load_checkpoint(previous / "resume", tag=CHECKPOINT_TAG)
        tokens_seen = read_json(previous / "train_state.json")["tokens_seen"]

    shard = load_shard(shard_dir)
    sequences, seq_len = shard["input_ids"].shape
    steps = sequences // train["global_batch"]
    tmp_out = out.with_name(f".{out.name}.tmp")
    live_dir = Path("dvclive") / part_name(part)
    if rank == 0:
        remove(tmp_out)
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False) if rank == 0 else None
    engine.train()
    losses = []
    columns = (
        TextColumn("[bold]part {task.fields[part]}[/] step {task.fields[step]}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=rank != 0) as progress:
        task = progress.add_task("train", total=steps, part=part, step=engine.global_steps, loss=0.0, tps=0.0)
        for step in range(steps):
            started = time.perf_counter()
            lr = learning_rate(engine.global_steps, train["lr"], train["warmup_steps"])
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for batch in micro_batches(
                shard, step, accumulation, train["micro_batch"], rank, world_size, engine.device
            ):
                loss = engine(**batch, use_cache=False).loss
                engine.backward(loss)
                engine.step()
                step_loss += loss.item() / accumulation
            tokens = train["global_batch"] * seq_len
            tokens_seen += tokens
            tokens_per_s = tokens / (time.perf_counter() - started)
            losses.append(step_loss)
            if live:
                live.step = engine.global_steps
                live.log_metric("train/loss", step_loss)
                live.log_metric("train/lr", lr)
                live.log_metric("train/tokens_per_s", tokens_per_s)
                live.log_metric("train/tokens_seen", tokens_seen)
            progress.update(task, advance=1, step=engine.global_steps, loss=step_loss, tps=tokens_per_s)

    state = {
        "part": part,
        "global_step": int(engine.global_steps),
        "tokens_seen": int(tokens_seen),
        "steps_this_part": steps,
        "loss_first": round(losses[0], 6) if losses else None,
        "loss_last": round(losses[-1], 6) if losses else None,
        "lr": learning_rate(engine.global_steps - 1, train["lr"], train["warmup_steps"]),
    }
    engine.save_checkpoint(str(tmp_out / "resume"), tag=CHECKPOINT_TAG, client_state={"part": part})
    if rank == 0:
        engine.module.save_pretrained(tmp_out)
        AutoTokenizer.from_pretrained(previous).save_pretrained(tmp_out)
        write_json(tmp_out / "train_state.json", state)
        remove(out)
        tmp_out.rename(out)
        live.summary = {"train/loss": state["loss_last"], "global_step": state["global_step"]}
        live.make_summary()
        live.end()
    return state


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", type=int, required=True)
    part = parser.parse_args().part
    train = validate_train(load_params("train")["train"])
    if not 1 <= part <= train["parts"]:
        raise ChatmillError(
            f"train-part{part}: train.parts is {train['parts']}; part must be 1..{train['parts']}"
        )
    command = launch_command(train, part)
    if command:
        if shutil.which("deepspeed") is None:
            raise ChatmillError("train: the `deepspeed` launcher is not on PATH; activate .venv")
        sys.exit(subprocess.call(command))
    single_process_environment()
    state = run_part(part, train)
    print(
        f"train-part{part}: global step {state['global_step']}, {state['tokens_seen']:,} tokens seen, "
        f"loss {state['loss_first']} -> {state['loss_last']}"
    )


if __name__ == "__main__":
    main()
