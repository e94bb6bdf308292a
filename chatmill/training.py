"""Training a part (the train-partN stages) through DeepSpeed, continuing exactly where the part
before stopped. train_part reads top to bottom: setup_part, resume_part, train_steps, save_part.

Part 1 starts from models/base; part N from models/part-(N-1): its weights, optimizer state and
global step (DeepSpeed checkpoint in resume/), so the LR schedule continues and warmup is not
repeated. Writes models/part-NN/ (HF safetensors + tokenizer, resume/, train_state.json) and
DVCLive logs in dvclive/part-NN/: per step loss, lr, grad norm, tokens/s and MFU; per part the
held-out loss on data/shards/eval. Effective batch = micro_batch x accumulation x world size.

Crash safety: every `train.save_every` optimizer steps the part writes an intermediate checkpoint,
checkpoints/part-NN/step-SSSSSS/ (git-ignored, not a DVC output): DeepSpeed state (weights, fp32
master weights, optimizer, global step), each rank's RNG state, the position in the shard and the
DVCLive logs so far. It is written under a hidden .tmp name and renamed when complete, so a kill
at any moment leaves the previous checkpoint intact. A re-run of a killed part resumes from the
newest one if params, world size and inputs are unchanged, and deletes it once models/part-NN/ is
in place.
"""

import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from chatmill.attention import VARLEN, check_packing, document_starts, use_packed_attention
from chatmill.errors import ChatmillError
from chatmill.flops import flops_per_token, mfu
from chatmill.io import read_json, remove, stable_hash, write_json
from chatmill.layout import (
    BASE_DIR,
    CHECKPOINTS_DIR,
    EVAL_SHARD_DIR,
    live_dir,
    model_dir,
    part_name,
    shard_dir,
)
from chatmill.params import require
from chatmill.ranks import cpu_threads
from chatmill.shards import ARRAYS, IGNORE_INDEX, load_shard
from chatmill.timings import mark

if TYPE_CHECKING:  # deepspeed takes seconds to import: setup_part imports it
    from deepspeed import DeepSpeedEngine
    from dvclive import Live
    from rich.progress import Progress

CHECKPOINT_TAG = "final"
# The train keys that change what a part learns: the train-partN stages declare them in dvc.yaml.
WEIGHT_KEYS = (
    "parts",
    "global_batch",
    "micro_batch",
    "lr",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "zero_stage",
    "bf16",
    "seed",
    "adapter",
    "lora",
)
ADAPTERS = ("none", "lora", "qlora")
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
# The ones that change where and how fast it trains, or what it logs: read, not declared.
SETTING_KEYS = (
    "gpus",
    "cpu_ranks",
    "hostfile",
    "save_every",
    "gradient_checkpointing",
    "compile",
    "fused_optimizer",
    "peak_tflops",
)


# --- What a part computes: pure functions ----------------------------------------------------------


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


def deepspeed_config(train: dict, accumulation: int, universal: bool = False) -> dict:
    """The engine's config; `universal`: the state to load is in DeepSpeed's universal format."""
    return {
        "train_batch_size": train["global_batch"],
        "train_micro_batch_size_per_gpu": train["micro_batch"],
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": train["grad_clip"],
        "bf16": {"enabled": train["bf16"]},
        "zero_optimization": {"stage": train["zero_stage"]},
        "steps_per_print": 2**31 - 1,  # progress is ours to report
        **({"checkpoint": {"load_universal": True}} if universal else {}),
    }


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
        ("cpu_ranks", int),
        ("save_every", int),
        ("gradient_checkpointing", bool),
        ("compile", bool),
        ("fused_optimizer", bool),
        ("peak_tflops", float),
    ):
        value = require(train, key, "train", (int, float) if kind is float else kind)
        positive = key in ("parts", "global_batch", "micro_batch", "cpu_ranks", "peak_tflops")
        if value < 0 or (positive and value == 0):
            raise ChatmillError(f"params.yaml: train.{key}={value} must be positive")
    if train["gpus"] and train["cpu_ranks"] > 1:
        raise ChatmillError(
            f"params.yaml: train.cpu_ranks={train['cpu_ranks']} is for a machine without GPUs, but "
            f"train.gpus={train['gpus']}; set train.cpu_ranks: 1 (train.gpus says how many GPUs)"
        )
    if train["zero_stage"] not in (0, 1, 2, 3):
        raise ChatmillError(f"params.yaml: train.zero_stage={train['zero_stage']}; use 0, 1, 2 or 3")
    require(train, "hostfile", "train")
    validate_adapter(train)
    return train


def validate_adapter(train: dict) -> None:
    """train.adapter and, for an adapter, train.lora: each value checked, one line per fault."""
    adapter = require(train, "adapter", "train", str)
    if adapter not in ADAPTERS:
        raise ChatmillError(f"params.yaml: train.adapter is {adapter!r}; use one of {', '.join(ADAPTERS)}")
    if adapter == "qlora" and not train["gpus"]:
        raise ChatmillError(
            "params.yaml: train.adapter: qlora loads the base in 4 bits through bitsandbytes, on CUDA GPUs "
            "only; with train.gpus: 0 use train.adapter: lora"
        )
    lora = require(train, "lora", "train", dict)
    unknown = sorted(set(lora) - set(LORA_KEYS))
    if unknown:
        raise ChatmillError(
            f"params.yaml: train.lora has unknown {', '.join(unknown)}; known: {', '.join(LORA_KEYS)}"
        )
    if require(lora, "r", "train.lora", int) < 1:
        raise ChatmillError(f"params.yaml: train.lora.r={lora['r']} must be >= 1")
    if require(lora, "alpha", "train.lora", (int, float)) <= 0:
        raise ChatmillError(f"params.yaml: train.lora.alpha={lora['alpha']} must be positive")
    if not 0 <= require(lora, "dropout", "train.lora", (int, float)) < 1:
        raise ChatmillError(f"params.yaml: train.lora.dropout={lora['dropout']} must be in [0, 1)")
    modules = require(lora, "target_modules", "train.lora", (str, list))
    if isinstance(modules, list) and (not modules or not all(isinstance(name, str) for name in modules)):
        raise ChatmillError(
            "params.yaml: train.lora.target_modules must be all-linear or a list of module names, "
            f"got {modules!r}"
        )


def micro_batches(
    shard: dict[str, np.ndarray],
    step: int,
    accumulation: int,
    micro_batch: int,
    rank: int,
    world_size: int,
    device: torch.device,
    with_document_starts: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """The micro batches of one optimizer step for this rank: rows in shard order. A pure function
    of the step, so a resumed part continues at the row where the checkpoint was taken.
    `with_document_starts` adds the varlen attention's cu_seq_lens_q, found on the host: the GPU
    would stop to report how many documents there are, in every layer."""
    global_batch = micro_batch * accumulation * world_size
    for micro in range(accumulation):
        start = step * global_batch + (micro * world_size + rank) * micro_batch
        rows = slice(start, start + micro_batch)
        batch = {
            name: torch.from_numpy(np.asarray(array[rows], dtype=np.int64)) for name, array in shard.items()
        }
        if with_document_starts:
            batch["cu_seq_lens_q"] = document_starts(batch["position_ids"])
        yield {name: tensor.to(device) for name, tensor in batch.items()}


def eval_rows(sequences: int, batch: int, rank: int, world_size: int) -> Iterator[np.ndarray]:
    """This rank's rows of the eval split, `batch` at a time. Every rank runs the same number of
    batches (under ZeRO-3 each forward gathers weights from all ranks), so the last ones may hold
    indices >= sequences, which the caller masks."""
    for first in range(0, sequences, batch * world_size):
        yield first + rank * batch + np.arange(batch)


# --- Intermediate checkpoints: the resume state, explicit -------------------------------------------


@dataclass(frozen=True)
class ResumeState:
    """Where a killed part continues: after `step` optimizer steps of this part (= the next row of
    the shard), with the run's token count and the part's first loss for train_state.json."""

    fingerprint: str
    step: int
    tokens_seen: int
    first_loss: float | None


def run_fingerprint(train: dict, part: int, world_size: int, inputs: list[Path]) -> str:
    """What a part's checkpoints are valid for: the params that change the weights, world size and
    the input files. Inputs are
    taken by path, size and mtime (a previous part with optimizer state can be 100 GB): a
    re-written input never matches, so the part starts over rather than resume on other data."""
    files = [
        (str(path), stat.st_size, stat.st_mtime_ns)
        for folder in inputs
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        for stat in (path.stat(),)
    ]
    learning = {key: train[key] for key in WEIGHT_KEYS}
    return stable_hash(json.dumps(learning, sort_keys=True), part, world_size, files)


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def newest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (zero-padded names sort by step); .tmp ones are partial."""
    complete = sorted(root.glob("step-*"))
    return complete[-1] if complete else None


def saved_world_size(folder: Path) -> int:
    """The data-parallel world size a DeepSpeed checkpoint was written at: one optimizer shard per
    rank under ZeRO (one file without it)."""
    return max(1, len(list(folder.glob("zero_pp_rank_*_optim_states.pt"))))


def universal_checkpoint(source: Path, target: Path, rank: int) -> None:
    """Convert a DeepSpeed checkpoint written at one world size into DeepSpeed's universal format,
    which loads at any other (weights, fp32 master weights, Adam's moments, step): rank 0 converts,
    the others wait."""
    import deepspeed.comm as dist
    from deepspeed.checkpoint import ds_to_universal

    if rank == 0:
        remove(target)
        options = ["--input_folder", str(source), "--output_folder", str(target), "--inject_missing_state"]
        options += ["--num_extract_workers", "1", "--num_merge_workers", "1"]
        argv, sys.argv = sys.argv, ["ds_to_universal", *options]
        try:
            ds_to_universal.main(ds_to_universal.parse_arguments())
        finally:
            sys.argv = argv
    dist.barrier()


def rng_state(device: torch.device) -> dict:
    numpy_name, numpy_key, *numpy_rest = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (numpy_name, numpy_key.tolist(), *numpy_rest),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    numpy_name, numpy_key, *numpy_rest = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((numpy_name, np.array(numpy_key, dtype=np.uint32), *numpy_rest))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(
    engine: "DeepSpeedEngine", root: Path, state: ResumeState, live_dir: Path, rank: int, frozen: bool
) -> None:
    """All ranks write into root/.step-SSSSSS.tmp (DeepSpeed's files, their RNG state); rank 0 adds
    the resume state and the DVCLive logs, then renames it to step-SSSSSS and drops older ones."""
    import deepspeed.comm as dist

    name = checkpoint_name(state.step)
    partial = root / f".{name}.tmp"
    if rank == 0:
        remove(partial)  # left by a run killed while writing this same checkpoint
    dist.barrier()
    partial.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(engine.device), partial / f"rng-rank-{rank:05d}.pt")
    if rank == 0:
        write_json(partial / "state.json", asdict(state))
        shutil.copytree(live_dir, partial / "dvclive")
    # ends with a barrier; an adapter's frozen base stays out (it is models/base)
    engine.save_checkpoint(str(root), tag=partial.name, save_latest=False, exclude_frozen_parameters=frozen)
    if rank == 0:
        remove(root / name)  # only ever a stale one (other params or inputs): a run never saves its start
        partial.rename(root / name)
        for older in root.glob("*step-*"):
            if older.name != name:
                remove(older)


@torch.no_grad()
def held_out_loss(
    engine: "DeepSpeedEngine", shard: dict[str, np.ndarray], batch: int, rank: int, world_size: int
) -> float:
    """Mean loss per supervised token over the whole eval split, the ranks' shares summed."""
    import deepspeed.comm as dist

    sequences = len(shard["input_ids"])
    totals = torch.zeros(2, dtype=torch.float64, device=engine.device)  # loss sum, supervised tokens
    engine.eval()
    for rows in eval_rows(sequences, batch, rank, world_size):
        inputs = {
            name: torch.from_numpy(np.asarray(shard[name][rows % sequences], dtype=np.int64))
            for name in ARRAYS
        }
        inputs["labels"][torch.from_numpy(rows >= sequences)] = IGNORE_INDEX  # padding rows of the last batch
        supervised = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())  # labels shift by one
        loss = engine(**{name: t.to(engine.device) for name, t in inputs.items()}, use_cache=False).loss
        if supervised:
            totals[0] += loss.double() * supervised
            totals[1] += supervised
    engine.train()
    dist.all_reduce(totals)
    if totals[1] == 0:
        raise ChatmillError(f"train: {EVAL_SHARD_DIR} has no supervised tokens; check the shard stage")
    return (totals[0] / totals[1]).item()


# --- The part: set up, resume, train, save --------------------------------------------------------


@dataclass
class Part:
    """A part ready to train: the engine over the model, the data, and where things go."""

    number: int
    train: dict
    engine: "DeepSpeedEngine"
    shard: dict[str, np.ndarray]
    eval_shard: dict[str, np.ndarray]
    steps: int  # optimizer steps of this part
    seq_len: int
    accumulation: int
    rank: int
    world_size: int
    varlen: bool  # the attention wants the document starts of each micro batch
    flops: int  # model FLOPs per token, for MFU
    fingerprint: str
    previous: Path  # the model this part continues: models/base or models/part-(N-1)
    checkpoint: Path | None  # a killed run's checkpoint to continue from
    reshard: bool  # part N-1 ran at another world size: its state loads through the universal format

    @property
    def adapter(self) -> bool:
        """Only adapters train: the frozen base is models/base, not part of the part's state."""
        return self.train["adapter"] != "none"

    @property
    def checkpoints(self) -> Path:
        return CHECKPOINTS_DIR / part_name(self.number)


def base_load_options(adapter: str) -> dict:
    """How models/base is loaded under an adapter: in fp32 (DeepSpeed casts to bf16 when asked), or
    for qlora in 4-bit NF4 with bf16 compute, frozen."""
    if adapter != "qlora":
        return {"dtype": torch.float32}
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ChatmillError(
            "train.adapter: qlora needs bitsandbytes: pip install -e '.[qlora]' on a CUDA machine"
        ) from None
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    return {"quantization_config": quantization, "dtype": torch.bfloat16}


def with_adapter(model: torch.nn.Module, number: int, previous: Path, train: dict) -> torch.nn.Module:
    """The base model with LoRA adapters (peft) that alone are trained: part N-1's, or for part 1
    new ones from train.lora (seeded, like every initialisation)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if train["adapter"] == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train["gradient_checkpointing"]
        )
    elif train["gradient_checkpointing"]:
        model.enable_input_require_grads()  # a checkpointed layer must get an input that wants gradients
    if number > 1:
        return PeftModel.from_pretrained(model, previous, is_trainable=True)
    lora = train["lora"]
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_model(
    number: int, train: dict, previous: Path, device: torch.device, seq_len: int
) -> tuple[torch.nn.Module, str]:
    """The model part N trains, with the attention it gets for packed rows: part N-1's whole model;
    or, with train.adapter, models/base with part N-1's adapters (new ones for part 1)."""
    from transformers import AutoModelForCausalLM

    adapter = train["adapter"]
    if adapter == "none":
        model = AutoModelForCausalLM.from_pretrained(previous, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(BASE_DIR, **base_load_options(adapter))
    attention = use_packed_attention(model, device, train["bf16"], seq_len)
    if train["gradient_checkpointing"]:
        model.activation_checkpointing_enable()
    if adapter != "none":
        model = with_adapter(model, number, previous, train)
    return model, attention


def join_ranks(train: dict) -> tuple[int, int]:
    """Join the part's ranks (gloo between CPU ranks, the accelerator's own backend between GPUs);
    CPU ranks share the cores out; only rank 0 shows transformers' progress bars. (rank, world size)"""
    import deepspeed
    import deepspeed.ops
    from transformers.utils.logging import disable_progress_bar

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world_size == 1:
        # No op is compatible, as DeepSpeed's comm sees it: it would otherwise probe every op (compiler
        # subprocesses) and JIT-build its shared-memory all-reduce (46 s on 2 cores, again for every
        # new checkout or environment path), for a world of one process that never reduces with another.
        deepspeed.ops.__compatible_ops__ = {}
    deepspeed.init_distributed(dist_backend=None if train["gpus"] else "gloo")
    if not train["gpus"] and world_size > 1:
        torch.set_num_threads(cpu_threads(int(os.environ.get("LOCAL_SIZE", world_size))))
    if rank:
        disable_progress_bar()
    return rank, world_size


def resumable_checkpoint(root: Path, fingerprint: str, number: int, rank: int) -> Path | None:
    """A killed run's newest checkpoint, if it was made with the same params, world size and inputs."""
    newest = newest_checkpoint(root)
    if newest and read_json(newest / "state.json")["fingerprint"] != fingerprint:
        if rank == 0:
            print(f"train-part{number}: not resuming from {newest}: params, GPUs or inputs have changed")
        return None
    return newest


def setup_part(number: int, train: dict) -> Part:
    """Check the inputs, join the ranks, load part N-1's model and build the DeepSpeed engine."""
    import deepspeed

    previous, data = model_dir(number - 1), shard_dir(number)
    for needed in (data, EVAL_SHARD_DIR):
        if not (needed / "input_ids.npy").exists():
            raise ChatmillError(
                f"train-part{number}: {needed} not found; run `dvc repro shard` (train.parts >= {number}?)"
            )
    if not previous.exists():
        raise ChatmillError(
            f"train-part{number}: {previous} not found; run `dvc repro train-part{number - 1}`"
        )

    rank, world_size = join_ranks(train)
    accumulation = accumulation_steps(train["global_batch"], train["micro_batch"], world_size)
    shard, eval_shard = load_shard(data), load_shard(EVAL_SHARD_DIR)
    sequences, seq_len = shard["input_ids"].shape
    fingerprint = run_fingerprint(train, number, world_size, [data, EVAL_SHARD_DIR, previous])
    checkpoint = resumable_checkpoint(CHECKPOINTS_DIR / part_name(number), fingerprint, number, rank)
    previous_state = previous / "resume" / CHECKPOINT_TAG
    reshard = number > 1 and checkpoint is None and saved_world_size(previous_state) != world_size
    torch.manual_seed(train["seed"] + number)

    device = torch.device("cuda" if train["gpus"] else "cpu")
    model, attention = trainable_model(number, train, previous, device, seq_len)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=train["lr"], weight_decay=train["weight_decay"], fused=train["fused_optimizer"]
    )
    config = deepspeed_config(train, accumulation, universal=reshard)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.eval()  # the check wants no dropout
    dtype = torch.bfloat16 if train["bf16"] else torch.float32
    check_packing(
        lambda **inputs: engine(**inputs, use_cache=False).logits, model, attention, dtype, engine.device
    )
    if train["compile"]:
        engine.compile()
    return Part(
        number=number,
        train=train,
        engine=engine,
        shard=shard,
        eval_shard=eval_shard,
        steps=sequences // train["global_batch"],
        seq_len=seq_len,
        accumulation=accumulation,
        rank=rank,
        world_size=world_size,
        varlen=attention == VARLEN,
        flops=flops_per_token(model, seq_len),
        fingerprint=fingerprint,
        previous=previous,
        checkpoint=checkpoint,
        reshard=reshard,
    )


def resume_part(part: Part) -> ResumeState:
    """Where the part starts: a killed run's checkpoint (weights, optimizer, global step, RNG); else
    part N-1's DeepSpeed state (weights, fp32 master weights, optimizer, global step), through the
    universal format when it was written at another world size; else, for part 1, the beginning."""
    engine = part.engine
    if part.checkpoint:
        resume = ResumeState(**read_json(part.checkpoint / "state.json"))
        engine.load_checkpoint(
            str(part.checkpoints), tag=part.checkpoint.name, load_module_strict=not part.adapter
        )
        set_rng_state(torch.load(part.checkpoint / f"rng-rank-{part.rank:05d}.pt"), engine.device)
        if part.rank == 0:  # the logs up to the checkpoint; DVC removed dvclive/part-NN before the re-run
            remove(live_dir(part.number))
            shutil.copytree(part.checkpoint / "dvclive", live_dir(part.number))
            where = f"{part.checkpoint} at step {resume.step} of {part.steps}"
            print(f"train-part{part.number}: resuming from {where}")
        return resume
    if part.number == 1:
        return ResumeState(part.fingerprint, 0, 0, None)
    root = part.previous / "resume"
    if part.reshard:
        written_at = saved_world_size(root / CHECKPOINT_TAG)
        if part.rank == 0:
            print(
                f"train-part{part.number}: {part.previous} was trained on {written_at} ranks, this part on "
                f"{part.world_size}: converting its state to DeepSpeed's universal checkpoint"
            )
        universal_checkpoint(
            root / CHECKPOINT_TAG, part.checkpoints / "universal" / CHECKPOINT_TAG, part.rank
        )
        root = part.checkpoints / "universal"
    engine.load_checkpoint(str(root), tag=CHECKPOINT_TAG, load_module_strict=not part.adapter)
    return ResumeState(
        part.fingerprint, 0, read_json(part.previous / "train_state.json")["tokens_seen"], None
    )


def progress_bar(part: Part) -> "Progress":
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]part {task.fields[part]}[/] step {task.fields[step]}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=part.rank != 0)


def train_steps(part: Part, start: ResumeState, live: "Live | None") -> tuple[ResumeState, float | None]:
    """The loop: one optimizer step per iteration, `accumulation` micro batches on each rank, a
    checkpoint every train.save_every steps. Returns the position at the end and the last loss."""
    import deepspeed.comm as dist

    engine, train = part.engine, part.train
    tokens_seen, first_loss, last_loss = start.tokens_seen, start.first_loss, None
    engine.train()
    with progress_bar(part) as progress:
        task = progress.add_task(
            "train",
            total=part.steps,
            completed=start.step,
            part=part.number,
            step=engine.global_steps,
            loss=0.0,
            tps=0.0,
        )
        for step in range(start.step, part.steps):
            started = time.perf_counter()
            lr = learning_rate(engine.global_steps, train["lr"], train["warmup_steps"])
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=engine.device)
            for batch in micro_batches(
                part.shard,
                step,
                part.accumulation,
                train["micro_batch"],
                part.rank,
                part.world_size,
                engine.device,
                part.varlen,
            ):
                loss = engine(**batch, use_cache=False).loss
                engine.backward(loss)
                engine.step()
                step_loss += loss.detach().float() / part.accumulation
            dist.all_reduce(step_loss)  # the mean over ranks: the loss of the whole global batch
            last_loss = step_loss.item() / part.world_size
            first_loss = last_loss if first_loss is None else first_loss
            grad_norm = engine.get_global_grad_norm()  # before clipping; None if DeepSpeed skips it
            tokens = train["global_batch"] * part.seq_len
            tokens_seen += tokens
            tokens_per_s = tokens / (time.perf_counter() - started)
            if live:
                live.step = engine.global_steps
                live.log_metric("train/loss", last_loss)
                live.log_metric("train/lr", lr)
                if grad_norm is not None:
                    live.log_metric("train/grad_norm", float(grad_norm))
                live.log_metric("train/tokens_per_s", tokens_per_s)
                live.log_metric(
                    "train/mfu", mfu(tokens_per_s, part.flops, part.world_size, train["peak_tflops"])
                )
                live.log_metric("train/tokens_seen", tokens_seen)
            progress.update(task, advance=1, step=engine.global_steps, loss=last_loss, tps=tokens_per_s)
            done = step + 1
            if train["save_every"] and done % train["save_every"] == 0 and done < part.steps:
                position = ResumeState(part.fingerprint, done, tokens_seen, first_loss)
                save_checkpoint(
                    engine, part.checkpoints, position, live_dir(part.number), part.rank, part.adapter
                )
    return ResumeState(part.fingerprint, part.steps, tokens_seen, first_loss), last_loss


def save_part(part: Part, end: ResumeState, last_loss: float | None, live: "Live | None") -> dict:
    """The held-out loss, then models/part-NN (HF weights + tokenizer, resume/, train_state.json):
    written to a hidden folder and renamed into place; then the checkpoints go."""
    import deepspeed
    import deepspeed.comm as dist
    from transformers import AutoTokenizer

    engine, train, out = part.engine, part.train, model_dir(part.number)
    eval_loss = held_out_loss(engine, part.eval_shard, train["micro_batch"], part.rank, part.world_size)
    state = {
        "part": part.number,
        "global_step": int(engine.global_steps),
        "tokens_seen": int(end.tokens_seen),
        "steps_this_part": part.steps,
        "world_size": part.world_size,
        "trainable_parameters": sum(p.numel() for p in engine.module.parameters() if p.requires_grad),
        "loss_first": round(end.first_loss, 6) if end.first_loss is not None else None,
        "loss_last": round(last_loss, 6) if last_loss is not None else None,
        "eval_loss": round(eval_loss, 6),
        "lr": learning_rate(engine.global_steps - 1, train["lr"], train["warmup_steps"]),
    }
    tmp_out = out.with_name(f".{out.name}.tmp")
    if part.rank == 0:
        remove(tmp_out)
    dist.barrier()
    engine.save_checkpoint(
        str(tmp_out / "resume"),
        tag=CHECKPOINT_TAG,
        client_state={"part": part.number},
        exclude_frozen_parameters=part.adapter,
    )
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):  # whole weights under ZeRO-3
        if part.rank == 0:
            engine.module.save_pretrained(tmp_out)  # an adapter: peft's layout, adapter_config.json
    if part.rank == 0:
        (tmp_out / "README.md").unlink(missing_ok=True)  # peft's blank card; `make release` writes one
        AutoTokenizer.from_pretrained(part.previous).save_pretrained(tmp_out)
        write_json(tmp_out / "train_state.json", state)
        remove(out)
        tmp_out.rename(out)
        live.step = engine.global_steps
        live.log_metric("eval/loss", eval_loss)
        live.summary = {
            "train/loss": state["loss_last"],
            "eval/loss": state["eval_loss"],
            "global_step": state["global_step"],
        }
        live.make_summary()
        live.end()
        remove(part.checkpoints)
    return state


def train_part(number: int, train: dict) -> dict:
    """Part `number` of the run, from where part N-1 (or a killed run of this part) stopped."""
    from dvclive import Live

    part = setup_part(number, train)
    start = resume_part(part)
    mark("set-up")
    live = None
    if part.rank == 0:
        live = Live(dir=str(live_dir(number)), resume=start.step > 0, dvcyaml=None, save_dvc_exp=False)
    end, last_loss = train_steps(part, start, live)
    return save_part(part, end, last_loss, live)
