import numpy as np
import pyarrow.parquet as pq
import pytest

from chatmill.errors import ChatmillError
from chatmill.io import write_parquet
from chatmill.mix import copies_per_conversation, shuffle_key, source_budgets, take_key, write_shuffled
from chatmill.schema import CONVERSATION_SCHEMA
from chatmill.sources import validate_sources


def take_keys(ids: list[str], seed: int = 0) -> np.ndarray:
    return np.array([take_key(seed, conversation_id) for conversation_id in ids], dtype=np.uint64)


def ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.int64)


def test_budgets_are_weight_shares_of_the_input_size():
    budgets = source_budgets(
        {"logs": 900, "instructions": 100}, {"logs": 0.5, "instructions": 0.5}, "conversations"
    )
    assert budgets == {"logs": 500.0, "instructions": 500.0}


def test_downsampling_takes_a_seeded_subset():
    ids = [f"c{i}" for i in range(100)]
    copies = copies_per_conversation(take_keys(ids), ones(100), 30)
    assert copies.sum() == 30 and set(copies.tolist()) == {0, 1}
    assert (copies_per_conversation(take_keys(ids), ones(100), 30) == copies).all()
    assert (copies_per_conversation(take_keys(ids, seed=1), ones(100), 30) != copies).any()
    # the choice depends on ids, not positions: reordering the input reorders the answer
    assert (copies_per_conversation(take_keys(ids[::-1]), ones(100), 30) == copies[::-1]).all()


def test_upsampling_repeats_whole_passes_then_a_subset():
    copies = copies_per_conversation(take_keys([f"c{i}" for i in range(10)]), ones(10), 25)
    assert copies.sum() == 25 and sorted(set(copies.tolist())) == [2, 3] and (copies == 3).sum() == 5


def test_token_budgets_are_met_to_within_one_conversation():
    costs = np.array([10, 200, 35, 80, 5, 60])
    copies = copies_per_conversation(take_keys([f"c{i}" for i in range(6)]), costs, 300)
    taken = int((costs * copies).sum())
    assert 300 <= taken < 300 + costs.max()


def test_conversations_are_taken_in_take_key_order_until_the_budget_is_spent():
    costs = np.array([10, 200, 35, 80, 5, 60])
    keys = take_keys([f"c{i}" for i in range(6)])
    copies = copies_per_conversation(keys, costs, 100)
    taken, spent = [], 0
    for index in np.argsort(keys):  # the rule, one conversation at a time
        if spent >= 100:
            break
        taken.append(index)
        spent += costs[index]
    assert sorted(np.flatnonzero(copies).tolist()) == sorted(taken)


def test_zero_budget_takes_nothing():
    assert copies_per_conversation(take_keys(["a", "b"]), ones(2), 0).tolist() == [0, 0]


def test_shuffled_output_is_every_copy_in_shuffle_key_order_whatever_the_bucket_count(
    tmp_path, monkeypatch, conversation_factory
):
    conversations = [conversation_factory(f"c{i:03d}", user=f"Hi number {i}.") for i in range(50)]
    write_parquet(tmp_path / "in.parquet", CONVERSATION_SCHEMA, conversations)
    copies = np.array([i % 3 for i in range(50)])
    outputs = []
    for rows_per_bucket in (1000, 7):
        monkeypatch.setattr("chatmill.mix.ROWS_PER_BUCKET", rows_per_bucket)
        out = tmp_path / f"out-{rows_per_bucket}.parquet"
        batches = pq.ParquetFile(tmp_path / "in.parquet").iter_batches(batch_size=16)
        assert write_shuffled(batches, copies, 0, out, tmp_path) == copies.sum()
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    expected = sorted(
        (shuffle_key(0, row["id"], copy), row)
        for row, count in zip(conversations, copies, strict=True)
        for copy in range(count)
    )
    write_parquet(tmp_path / "expected.parquet", CONVERSATION_SCHEMA, [row for _, row in expected])
    assert outputs[0] == (tmp_path / "expected.parquet").read_bytes()
    assert not list(tmp_path.glob("bucket-*"))


def test_all_weights_zero_is_a_config_error():
    sources = {"logs": {"uri": "a.jsonl", "format": "pippa", "trim": True, "weight": 0}}
    with pytest.raises(ChatmillError, match="all sources have weight 0"):
        validate_sources(sources)
