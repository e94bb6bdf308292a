import pytest
from train import accumulation_steps, deepspeed_config, launch_command, learning_rate, validate_train

from chatmill.errors import ChatmillError

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
    "gpus": 4,
    "hostfile": None,
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


def test_launch_command_for_gpus_and_nodes(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    command = launch_command(TRAIN, part=3)
    assert command[:3] == ["deepspeed", "--num_gpus", "4"] and command[-2:] == ["--part", "3"]
    nodes = launch_command({**TRAIN, "hostfile": "hostfile.txt"}, part=1)
    assert nodes[:3] == ["deepspeed", "--hostfile", "hostfile.txt"]
    assert launch_command({**TRAIN, "gpus": 0}, part=1) is None
    monkeypatch.setenv("LOCAL_RANK", "0")  # already launched: run in this process
    assert launch_command(TRAIN, part=1) is None


def test_bad_train_params_are_named():
    with pytest.raises(ChatmillError, match="train.zero_stage=4"):
        validate_train({**TRAIN, "zero_stage": 4})
    with pytest.raises(ChatmillError, match="train.micro_batch=0 must be positive"):
        validate_train({**TRAIN, "micro_batch": 0})
