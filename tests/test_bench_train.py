"""The training benchmark's data layouts: the three ways supervise the same tokens in the same contexts."""

from pathlib import Path

import pytest
import torch

from chatmill.bench import train as bench_train
from chatmill.modeling import scratch_model
from chatmill.prompt import Encoded, encode_conversation
from chatmill.shards import IGNORE_INDEX
from chatmill.training import with_adapter

PAD = 0


def window(*runs: tuple[int, bool]) -> Encoded:
    """A window from (length, supervised) runs; token ids count up from 1."""
    supervised = [flag for length, flag in runs for _ in range(length)]
    return Encoded(list(range(1, len(supervised) + 1)), supervised)


def test_per_reply_examples_supervise_exactly_one_reply_each():
    source = window((3, False), (2, True), (2, False), (3, True), (1, False))
    examples = bench_train.per_reply_examples(source)
    assert [len(example) for example in examples] == [5, 10]
    assert [sum(example.supervised) for example in examples] == [2, 3]
    assert examples[0].supervised == [False] * 3 + [True] * 2
    assert examples[1].supervised == [False] * 7 + [True] * 3  # the first reply is context here
    for example in examples:
        assert example.ids == source.ids[: len(example)]


def test_a_window_without_replies_gives_no_examples():
    assert bench_train.per_reply_examples(window((4, False))) == []


def test_padded_batch_pads_to_the_longest_and_masks_the_padding():
    short, long = window((1, False), (1, True)), window((2, False), (2, True))
    batch = bench_train.padded_batch([short, long], PAD)
    assert batch.inputs["input_ids"].tolist() == [[1, 2, PAD, PAD], [1, 2, 3, 4]]
    assert batch.inputs["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.inputs["labels"].tolist() == [
        [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX],
        [-100, -100, 3, 4],
    ]
    assert batch.padding == 2


def test_padded_batches_keep_every_example_within_the_token_budget():
    examples = [window((length, False), (1, True)) for length in (1, 7, 2, 3, 5, 1, 6, 2)]
    batches = bench_train.padded_batches(examples, PAD, token_budget=12, seed=0)
    for batch in batches:
        assert batch.inputs["input_ids"].numel() <= 12
    assert sum(batch.inputs["input_ids"].shape[0] for batch in batches) == len(examples)
    real = sorted(int(length) for batch in batches for length in batch.inputs["attention_mask"].sum(1))
    assert real == sorted(len(example) for example in examples)


def test_op_split_sorts_matmuls_attention_other_ops_and_the_rest_of_the_step():
    self_cpu_us = {
        "aten::addmm": 300.0,
        "aten::mm": 200.0,
        "MmBackward0": 10.0,
        "aten::_scaled_dot_product_flash_attention_for_cpu": 100.0,
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward": 100.0,
        "aten::mul": 90.0,
        "aten::mmap_like_name_that_is_no_matmul": 100.0,
    }
    split = bench_train.op_split(self_cpu_us, wall_us=1000.0)
    assert split == {
        "step_ms": 1.0,
        "matmul": 0.51,
        "attention": 0.2,
        "other_ops": 0.19,
        "outside_ops": 0.1,
    }


@pytest.fixture
def three_ways(tiny_tokenizer, conversation_factory):
    conversations = [
        conversation_factory("c1", bot_replies=("Hello there, traveller.",) * 3),
        conversation_factory("c2", bot_replies=("Hello.", "Hello there.")),
        conversation_factory("c3", bot_replies=("Hello there, traveller. Hello there.",) * 6),
    ]
    seq_len, pad_id = 48, tiny_tokenizer.pad_token_id
    windows = bench_train.conversation_windows(tiny_tokenizer, conversations, seq_len)
    assert len(windows) > len(conversations)  # c3 is cut into windows
    replies = [example for one in windows for example in bench_train.per_reply_examples(one)]
    return {
        "packed": bench_train.packed_batches(windows, seq_len, pad_id, micro_batch=2),
        "padded": bench_train.padded_batches(windows, pad_id, 2 * seq_len, seed=0),
        "per-reply": bench_train.padded_batches(replies, pad_id, 2 * seq_len, seed=0),
    }


def test_the_three_ways_supervise_the_same_tokens_in_the_same_contexts(three_ways, tiny_tokenizer):
    counts = {way: bench_train.token_counts(batches) for way, batches in three_ways.items()}
    supervised = {way: count["supervised_tokens"] for way, count in counts.items()}
    assert len(set(supervised.values())) == 1 and supervised["packed"] > 0
    targets = {way: bench_train.supervised_targets(batches) for way, batches in three_ways.items()}
    assert targets["packed"] == targets["padded"] == targets["per-reply"]
    assert len(targets["packed"]) == supervised["packed"]


def test_supervised_targets_tell_apart_the_same_tokens_in_another_context(
    tiny_tokenizer, conversation_factory
):
    conversation = conversation_factory("c", bot_replies=("Hello.",) * 2)
    header, (user, reply, *_) = encode_conversation(tiny_tokenizer, conversation)
    whole = bench_train.packed_batches([header + user + reply + user + reply], 64, PAD, 1)
    split = bench_train.packed_batches([header + user + reply, header + user + reply], 64, PAD, 1)
    assert (
        bench_train.token_counts(whole)["supervised_tokens"]
        == bench_train.token_counts(split)["supervised_tokens"]
    )
    assert bench_train.supervised_targets(whole) != bench_train.supervised_targets(split)


def test_a_training_step_lowers_the_loss_on_its_batch(three_ways, tiny_tokenizer, tiny_scratch):
    trainer = bench_train.WayTrainer(
        scratch_model(tiny_scratch, tiny_tokenizer, seed=0),
        {"lr": 1e-2, "weight_decay": 0.0, "grad_clip": 1.0},
    )
    batch = three_ways["packed"][0]
    first = trainer.step(batch)
    for _ in range(3):
        last = trainer.step(batch)
    assert last < first and trainer.wall_s > 0
    assert torch.isfinite(torch.tensor(last))


def test_lora_keeps_a_fraction_of_the_optimizer_state_of_full_fine_tuning(
    three_ways, tiny_tokenizer, tiny_scratch
):
    train = {"lr": 1e-2, "weight_decay": 0.0, "grad_clip": 1.0, "gradient_checkpointing": False}
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear"}
    full = bench_train.WayTrainer(scratch_model(tiny_scratch, tiny_tokenizer, seed=0), train)
    adapted = bench_train.WayTrainer(
        with_adapter(
            scratch_model(tiny_scratch, tiny_tokenizer, seed=0),
            1,
            Path(),
            train | {"adapter": "lora", "lora": lora},
        ),
        train,
    )
    assert bench_train.optimizer_state_bytes(full.optimizer) == 0  # AdamW makes its state on the first step
    for trainer in (full, adapted):
        trainer.step(three_ways["packed"][0])
    for trainer in (full, adapted):
        weights = sum(parameter.numel() for parameter in trainer.trainable)
        steps = len(trainer.trainable)  # one fp32 step count per weight tensor
        assert bench_train.optimizer_state_bytes(trainer.optimizer) == 4 * (2 * weights + steps)
    assert sum(p.numel() for p in adapted.trainable) < sum(p.numel() for p in full.trainable) / 4


class RecordingTrainer:
    """Stands in for WayTrainer: records the order of steps across runs, one second each."""

    def __init__(self, name: str, log: list):
        self.name, self.log, self.wall_s = name, log, 0.0

    def step(self, batch: bench_train.MicroBatch) -> float:
        self.log.append((self.name, int(batch.inputs["input_ids"][0, 0])))
        self.wall_s += 1.0
        return 0.0


def labelled_batch(first_id: int, supervised: int) -> bench_train.MicroBatch:
    """One row: first_id, then supervised tokens (labels set from the second token on)."""
    ids = torch.tensor([[first_id] + [7] * supervised])
    return bench_train.MicroBatch({"input_ids": ids, "labels": ids.clone()}, padding=0)


def test_rounds_interleave_the_ways_step_by_step_and_count_what_each_trained():
    batches = {"one": [labelled_batch(1, 4)], "three": [labelled_batch(n, 2) for n in (1, 2, 3)]}
    log: list = []
    trainers = {name: RecordingTrainer(name, log) for name in batches}
    times = bench_train.run_rounds(trainers, batches, rounds=2)

    timed = log[len(batches) :]  # after one untimed step each
    assert timed[:6] == [("one", 1), ("three", 1), ("three", 2), ("one", 1), ("one", 1), ("three", 3)]
    assert len(timed) == 2 * 3 * len(batches)
    assert times["one"].steps == times["three"].steps == [3, 3]
    assert times["one"].supervised_tokens == [12, 12]  # its one batch three times a round
    assert times["three"].supervised_tokens == [6, 6]
    assert times["one"].speeds() == [4.0, 4.0]
    assert times["three"].step_seconds() == [1.0, 1.0]
