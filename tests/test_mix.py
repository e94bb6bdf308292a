import pytest
from mix import copies_per_conversation, source_budgets

from chatmill.errors import ChatmillError
from chatmill.sources import validate_sources


def test_budgets_are_weight_shares_of_the_input_size():
    budgets = source_budgets(
        {"logs": 900, "instructions": 100}, {"logs": 0.5, "instructions": 0.5}, "conversations"
    )
    assert budgets == {"logs": 500.0, "instructions": 500.0}


def test_downsampling_takes_a_seeded_subset():
    ids = [f"c{i}" for i in range(100)]
    copies = copies_per_conversation(ids, [1] * 100, 30, seed=0)
    assert sum(copies) == 30 and set(copies) == {0, 1}
    assert copies_per_conversation(ids, [1] * 100, 30, seed=0) == copies
    assert copies_per_conversation(ids, [1] * 100, 30, seed=1) != copies
    # the choice depends on ids, not positions: reordering the input reorders the answer
    assert copies_per_conversation(ids[::-1], [1] * 100, 30, seed=0) == copies[::-1]


def test_upsampling_repeats_whole_passes_then_a_subset():
    copies = copies_per_conversation([f"c{i}" for i in range(10)], [1] * 10, 25, seed=0)
    assert sum(copies) == 25 and sorted(set(copies)) == [2, 3] and copies.count(3) == 5


def test_token_budgets_are_met_to_within_one_conversation():
    costs = [10, 200, 35, 80, 5, 60]
    copies = copies_per_conversation([f"c{i}" for i in range(6)], costs, 300, seed=0)
    taken = sum(c * n for c, n in zip(costs, copies, strict=True))
    assert 300 <= taken < 300 + max(costs)


def test_zero_budget_takes_nothing():
    assert copies_per_conversation(["a", "b"], [1, 1], 0, seed=0) == [0, 0]


def test_all_weights_zero_is_a_config_error():
    sources = {"logs": {"uri": "a.jsonl", "format": "pippa", "trim": True, "weight": 0}}
    with pytest.raises(ChatmillError, match="all sources have weight 0"):
        validate_sources(sources)
