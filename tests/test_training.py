import numpy as np
import pytest
import torch

from chatmill.errors import ChatmillError
from chatmill.training import (
    SETTING_KEYS,
    WEIGHT_KEYS,
    accumulation_steps,
    deepspeed_config,
    eval_rows,
    join_ranks,
    learning_rate,
    micro_batches,
    newest_checkpoint,
    rng_state,
    run_fingerprint,
    set_rng_state,
    validate_train,
)

TRAIN = {
    "parts": 10,
    "global_batch": 256,
    "micro_batch": 8,
    "lr": 0.98e-5,
    "warmup_steps": 24,
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "zero_stage": 1,
    "bf16": True,
    "seed": 0,
    "adapter": "none",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
    "gpus": 4,
    "cpu_ranks": 1,
    "hostfile": None,
    "save_every": 20,
    "gradient_checkpointing": True,
    "compile": False,
    "fused_optimizer": True,
    "peak_tflops": 154.8,
}


def test_warmup_is_linear_then_constant():
    lrs = [learning_rate(step, 0.98e-5, 24) for step in range(30)]
    assert lrs[0] == pytest.approx(0.98e-5 / 24)
    assert lrs[11] == pytest.approx(0.98e-5 / 2)
    assert lrs[23:] == [0.98e-5] * 7
    assert learning_rate(0, 1e-3, 0) == 1e-3


def test_accumulation_is_derived_from_the_global_batch():
    assert accumulation_steps(256, 8, 4) == 8  # the logbook: 4 GPUs, effective batch 256
    with pytest.raises(ChatmillError, match="not a multiple of train.micro_batch x GPUs"):
        accumulation_steps(100, 8, 4)


def test_deepspeed_config_carries_zero_stage_and_bf16():
    config = deepspeed_config(TRAIN, accumulation=8)
    assert config["zero_optimization"] == {"stage": 1}
    assert config["bf16"] == {"enabled": True}
    assert config["train_batch_size"] == 256 and config["gradient_accumulation_steps"] == 8


def test_bad_train_params_are_named():
    with pytest.raises(ChatmillError, match="train.zero_stage=4"):
        validate_train({**TRAIN, "zero_stage": 4})
    with pytest.raises(ChatmillError, match="train.micro_batch=0 must be positive"):
        validate_train({**TRAIN, "micro_batch": 0})
    with pytest.raises(ChatmillError, match="train.peak_tflops=0 must be positive"):
        validate_train({**TRAIN, "peak_tflops": 0})
    with pytest.raises(ChatmillError, match="train.compile must be bool"):
        validate_train({**TRAIN, "compile": "yes"})
    with pytest.raises(ChatmillError, match="train.cpu_ranks=0 must be positive"):
        validate_train({**TRAIN, "cpu_ranks": 0})
    with pytest.raises(
        ChatmillError, match=r"train.cpu_ranks=2 is for a machine without GPUs, but train.gpus"
    ):
        validate_train({**TRAIN, "cpu_ranks": 2})
    with pytest.raises(ChatmillError, match="train.save_every is missing"):
        validate_train({key: value for key, value in TRAIN.items() if key != "save_every"})


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_rows_cover_the_split_once_in_equal_rounds(world_size):
    per_rank = [list(eval_rows(11, 2, rank, world_size)) for rank in range(world_size)]
    assert len({len(batches) for batches in per_rank}) == 1  # ZeRO-3: same number of forwards
    rows = np.concatenate([rows for batches in per_rank for rows in batches])
    assert sorted(rows[rows < 11]) == list(range(11))


def test_micro_batches_take_each_rank_its_rows_and_the_document_starts():
    positions = np.tile(np.array([0, 1, 2, 0, 1, 0], dtype=np.int32), (8, 1))
    shard = {"input_ids": np.arange(48).reshape(8, 6), "labels": np.zeros((8, 6)), "position_ids": positions}
    batches = list(micro_batches(shard, 1, 2, 1, rank=1, world_size=2, device=torch.device("cpu")))
    assert [b["input_ids"][0, 0].item() for b in batches] == [30, 42]  # step 1: rows 4..7, rank 1's
    assert "cu_seq_lens_q" not in batches[0]
    with_starts = next(micro_batches(shard, 0, 1, 2, 0, 1, torch.device("cpu"), with_document_starts=True))
    assert with_starts["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 9, 11, 12]


def test_newest_checkpoint_ignores_partial_ones(tmp_path):
    assert newest_checkpoint(tmp_path / "missing") is None
    for name in ("step-000005", "step-000010", ".step-000015.tmp"):
        (tmp_path / name).mkdir()
    assert newest_checkpoint(tmp_path) == tmp_path / "step-000010"


def test_fingerprint_changes_with_params_world_size_and_inputs(tmp_path):
    (tmp_path / "shard").mkdir()
    (tmp_path / "shard/input_ids.npy").write_bytes(b"1234")
    inputs = [tmp_path / "shard"]
    fingerprint = run_fingerprint(TRAIN, 1, 4, inputs)
    assert run_fingerprint(dict(reversed(TRAIN.items())), 1, 4, inputs) == fingerprint
    assert run_fingerprint({**TRAIN, "lr": 1e-5}, 1, 4, inputs) != fingerprint
    assert run_fingerprint(TRAIN, 2, 4, inputs) != fingerprint
    assert run_fingerprint(TRAIN, 1, 2, inputs) != fingerprint
    for key in WEIGHT_KEYS:  # every key that changes the weights changes it
        changed = {
            bool: lambda value: not value,
            str: lambda value: "lora",
            dict: lambda value: value | {"r": 4},
        }
        changed = changed.get(type(TRAIN[key]), lambda value: value + 1)(TRAIN[key])
        assert run_fingerprint({**TRAIN, key: changed}, 1, 4, inputs) != fingerprint, key
    settings = {"gpus": 4, "cpu_ranks": 2, "hostfile": "hostfile", "save_every": 7}
    settings |= {"gradient_checkpointing": False, "compile": True, "fused_optimizer": False}
    settings |= {"peak_tflops": 1.0}
    assert settings.keys() == set(SETTING_KEYS)  # speed and logging only: a checkpoint stays valid
    assert run_fingerprint({**TRAIN, **settings}, 1, 4, inputs) == fingerprint
    (tmp_path / "shard/input_ids.npy").write_bytes(b"12345")
    assert run_fingerprint(TRAIN, 1, 4, inputs) != fingerprint


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save(rng_state(torch.device("cpu")), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), torch.device("cpu"))
    actual = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], actual[0]) and np.array_equal(expected[1], actual[1])
    assert expected[2] == actual[2]


@pytest.mark.parametrize("world_size, probed", [(1, False), (2, True)])
def test_only_a_world_of_several_ranks_has_deepspeed_probe_its_ops_for_shared_memory(
    monkeypatch, world_size, probed
):
    import deepspeed
    import deepspeed.ops

    monkeypatch.setattr(deepspeed, "init_distributed", lambda dist_backend: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    monkeypatch.setattr(deepspeed.ops, "__compatible_ops__", "not yet probed", raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    assert join_ranks({"gpus": 0}) == (0, world_size)
    assert (deepspeed.ops.__compatible_ops__ == "not yet probed") == probed
