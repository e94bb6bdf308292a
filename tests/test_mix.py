import copy
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import DEFAULT_PARAMS, run_stage, write_workspace

from chatmill.errors import ChatmillError
from chatmill.io import write_parquet
from chatmill.mix import (
    conversation_costs,
    copies_per_conversation,
    mix_file,
    shuffle_key,
    source_budgets,
    take_key,
    validate_mix,
    whole_budgets,
    write_shuffled,
)
from chatmill.prompt import prepare_tokenizer, prompt_format
from chatmill.schema import CONVERSATION_SCHEMA
from chatmill.sources import validate_sources


def take_keys(ids: list[str], seed: int = 0) -> np.ndarray:
    return np.array([take_key(seed, conversation_id) for conversation_id in ids], dtype=np.uint64)


def ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.int64)


def test_budgets_are_weight_shares_of_the_input_size():
    budgets = source_budgets(
        {"logs": 900, "instructions": 100}, {"logs": 0.5, "instructions": 0.5}, "conversations", 5
    )
    assert budgets == {"logs": 500.0, "instructions": 500.0}


def test_a_source_gives_at_most_max_repeat_copies_and_the_rest_goes_to_the_others_by_weight():
    costs = {"logs": 900, "small": 40, "tasks": 60}
    weights = {"logs": 0.3, "small": 0.5, "tasks": 0.2}
    # small would need 500 (12.5x its size): it gives 3 x 40. The 880 left split 0.3 : 0.2 would ask
    # 352 of tasks, over its 3 x 60: it gives 180, and logs takes the rest.
    assert source_budgets(costs, weights, "conversations", 3) == {
        "logs": 700.0,
        "small": 120.0,
        "tasks": 180.0,
    }
    assert source_budgets(costs, weights, "tokens", 3) == {"logs": 700.0, "small": 120.0, "tasks": 180.0}
    # a larger cap: small is still capped, and what it leaves splits 0.3 : 0.2
    assert source_budgets(costs, weights, "tokens", 10) == pytest.approx(
        {"logs": 360.0, "small": 400.0, "tasks": 240.0}
    )


def test_an_empty_sources_share_goes_to_the_others_by_weight():
    costs = {"logs": 300, "chitchat": 0, "tasks": 97}
    budgets = source_budgets(costs, {"logs": 0.5, "chitchat": 0.25, "tasks": 0.25}, "conversations", 3)
    assert budgets == {"logs": 265.0, "chitchat": 0.0, "tasks": 132.0}  # 397 in, 397 out


def test_when_the_sources_with_a_weight_are_all_capped_the_mix_is_smaller_than_its_input():
    budgets = source_budgets({"logs": 10, "archive": 1000}, {"logs": 1.0, "archive": 0.0}, "conversations", 3)
    assert budgets == {"logs": 30.0, "archive": 0.0}


def test_budgets_always_fill_the_input_size_within_the_cap():
    rng = random.Random(0)
    for _ in range(500):
        names = [f"s{i}" for i in range(rng.randint(1, 6))]
        costs = {name: rng.choice([0, 1, 3, 40, 977, 5000]) for name in names}
        weights = {name: rng.choice([0.0, 0.05, 0.1, 0.5, 0.7, 3.0]) for name in names}
        if not sum(weights.values()):
            continue
        max_repeat = rng.randint(1, 5)
        budgets = source_budgets(costs, weights, "conversations", max_repeat)
        assert all(budget == int(budget) for budget in budgets.values())
        assert all(budgets[name] <= max_repeat * costs[name] for name in names)
        assert all(budgets[name] == 0 for name in names if weights[name] == 0)
        capacity = sum(max_repeat * costs[name] for name in names if weights[name] > 0)
        assert sum(budgets.values()) == min(sum(costs.values()), capacity)


def test_whole_budgets_round_the_largest_remainders_up():
    assert whole_budgets({"a": 1 / 3 * 10, "b": 1 / 3 * 10, "c": 1 / 3 * 10}) == {
        "a": 4.0,
        "b": 3.0,
        "c": 3.0,
    }
    assert whole_budgets({"a": 2.5, "b": 3.5}) == {"a": 3.0, "b": 3.0}  # rounding each alone: 2 + 4
    assert whole_budgets({"a": 0.7 * 397, "b": 0.3 * 397}) == {"a": 278.0, "b": 119.0}


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


def test_a_budget_at_the_cap_takes_each_conversation_max_repeat_times():
    costs = np.array([10, 200, 35])
    copies = copies_per_conversation(take_keys(["a", "b", "c"]), costs, 3 * int(costs.sum()))
    assert copies.tolist() == [3, 3, 3]


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


# ---------------------------------------------------------------- the stage, after length-trim

LONG_REPLY = " ".join(["word"] * 60)  # a median of 60 words: always kept by the default trim


def trim_small_and_emptied_sources(root, conversation_factory, weights=None, **mix_changes) -> None:
    """length-trim run (in `root`, the current directory) on three sources of data/clean, with params
    for four: 300 conversations of `logs`, 10 of `small`, 20 of `chitchat` whose replies length-trim
    always drops, and none of `archive` (clean kept none)."""
    rows = [
        conversation_factory(f"{name}-{i}", source=name, user=f"Hello {name} {i}.", bot_replies=(reply,))
        for name, count, reply in (
            ("logs", 300, LONG_REPLY),
            ("small", 10, LONG_REPLY),
            ("chitchat", 20, "Yes."),
        )
        for i in range(count)
    ]
    weights = weights or {"logs": 0.4, "small": 0.3, "chitchat": 0.2, "archive": 0.1}
    sources = {
        name: {"uri": f"src/{name}.jsonl", "format": "sharegpt", "trim": True, "weight": weight}
        for name, weight in weights.items()
    }
    mix = copy.deepcopy(DEFAULT_PARAMS["mix"]) | mix_changes
    write_workspace(root, {"sources": sources, "mix": mix}, replace=True)
    (root / "data" / "clean").mkdir(parents=True)
    write_parquet(root / "data" / "clean" / "conversations.parquet", CONVERSATION_SCHEMA, rows)
    run_stage("length_trim")


def test_a_capped_and_an_emptied_source_leave_the_mix_as_large_as_its_input_with_a_warning_each(
    tmp_path, monkeypatch, capsys, conversation_factory
):
    monkeypatch.chdir(tmp_path)
    trim_small_and_emptied_sources(tmp_path, conversation_factory)
    capsys.readouterr()
    run_stage("mix")
    out, err = capsys.readouterr()
    warnings = [
        "mix: source 'archive' is empty (clean kept none of its records; see data/clean/stats.json): it "
        "makes 0.0% of the mix, not 10.0%; the rest goes to the other sources by weight "
        "(mix.on_empty=redistribute)",
        "mix: source 'chitchat' is empty (length-trim kept 0 of its 20 conversations): it makes 0.0% of the "
        "mix, not 20.0%; the rest goes to the other sources by weight (mix.on_empty=redistribute)",
        "mix: source 'small' would be repeated 9.3x to make its 30.0% share, more than mix.max_repeat=3: "
        "repeated 3x it makes 9.7%; the rest goes to the other sources by weight",
    ]
    assert err == "".join(f"warning: {warning}\n" for warning in warnings)
    shares = "archive 0.0%, chitchat 0.0%, logs 90.3%, small 9.7% of conversations"
    assert out.strip() == f"mix: 310 rows from 290 conversations ({shares})"  # after a blank line from rich

    stats = json.loads((tmp_path / "data" / "mixed" / "stats.json").read_text())
    assert stats["warnings"] == warnings
    assert stats["rows"] == 310  # 310 conversations came through length-trim
    composition = stats["composition"]
    assert {
        name: (entry["rows"], entry["repeat_factor"], entry["limit"]) for name, entry in composition.items()
    } == {
        "archive": (0, 0.0, "empty"),
        "chitchat": (0, 0.0, "empty"),
        "logs": (280, 0.933, None),
        "small": (30, 3.0, "max_repeat"),
    }
    rows = pq.read_table(tmp_path / "data" / "mixed" / "conversations.parquet", columns=["id"]).column("id")
    counts = np.unique(rows.to_numpy(zero_copy_only=False), return_counts=True)[1]
    assert len(rows) == 310 and counts.max() == 3
    assert stats["in"] == stats["out"] + sum(stats["dropped"].values())


def test_on_empty_fail_names_the_source_and_the_params_and_writes_nothing(
    tmp_path, monkeypatch, capsys, conversation_factory
):
    monkeypatch.chdir(tmp_path)
    trim_small_and_emptied_sources(tmp_path, conversation_factory, on_empty="fail")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_stage("mix")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: mix: source 'archive' is empty (clean kept none of its records; see data/clean/stats.json); "
        "set sources.archive.weight: 0 to mix without it, or mix.on_empty: redistribute to give its 10.0% "
        "share to the others\n"
    )
    assert not (tmp_path / "data" / "mixed").exists()
    # with archive out of the mix (weight 0), the next empty source is named, and what would keep some of it
    text = (tmp_path / "params.yaml").read_text().replace("weight: 0.1", "weight: 0")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(SystemExit):
        run_stage("mix")
    assert capsys.readouterr().err == (
        "error: mix: source 'chitchat' is empty (length-trim kept 0 of its 20 conversations); lower "
        "trim.threshold or set sources.chitchat.trim: false to keep some, set sources.chitchat.weight: 0 to "
        "mix without it, or mix.on_empty: redistribute to give its 22.2% share to the others\n"
    )


def test_when_no_source_with_a_weight_can_fill_the_mix_it_is_smaller_and_says_so(
    tmp_path, monkeypatch, capsys, conversation_factory
):
    monkeypatch.chdir(tmp_path)
    weights = {"logs": 0.0, "small": 1.0, "chitchat": 0.0, "archive": 0.0}
    trim_small_and_emptied_sources(tmp_path, conversation_factory, weights)
    capsys.readouterr()
    run_stage("mix")
    assert capsys.readouterr().err == (
        "warning: mix: source 'small' would be repeated 31.0x to make its 100.0% share, more than "
        "mix.max_repeat=3: repeated 3x it makes 100.0%; no other source can take the rest\n"
    )
    assert json.loads((tmp_path / "data" / "mixed" / "stats.json").read_text())["rows"] == 30


def test_when_every_source_with_a_weight_is_empty_there_is_nothing_to_mix(
    tmp_path, monkeypatch, capsys, conversation_factory
):
    monkeypatch.chdir(tmp_path)
    weights = {"logs": 0.0, "small": 0.0, "chitchat": 0.5, "archive": 0.5}
    trim_small_and_emptied_sources(tmp_path, conversation_factory, weights)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_stage("mix")
    assert capsys.readouterr().err == (
        "error: mix: nothing to mix: every source with a weight is empty (archive, chitchat); lower "
        "trim.threshold, or give a source with conversations a weight (sources.NAME.weight)\n"
    )
    assert not (tmp_path / "data" / "mixed").exists()


def test_a_capped_mix_is_the_same_bytes_whatever_the_bucket_and_batch_sizes(
    tmp_path, monkeypatch, conversation_factory
):
    monkeypatch.chdir(tmp_path)
    trim_small_and_emptied_sources(tmp_path, conversation_factory)
    run_stage("mix")
    first = (tmp_path / "data" / "mixed" / "conversations.parquet").read_bytes()
    monkeypatch.setattr("chatmill.mix.ROWS_PER_BUCKET", 7)
    monkeypatch.setattr("chatmill.mix.READ_BATCH", 5)
    run_stage("mix")
    assert (tmp_path / "data" / "mixed" / "conversations.parquet").read_bytes() == first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_repeat": 0}, "params.yaml: mix.max_repeat=0 must be >= 1 (copies of a conversation)"),
        ({"max_repeat": 2.5}, "params.yaml: mix.max_repeat must be int, got 2.5"),
        ({"max_repeat": True}, "params.yaml: mix.max_repeat must be int, got True"),
        ({"on_empty": "drop"}, "params.yaml: mix.on_empty is 'drop'; use one of redistribute, fail"),
        ({"by": "words"}, "params.yaml: mix.by is 'words'; use one of conversations, tokens"),
    ],
)
def test_bad_mix_params_give_one_line_errors(change, message):
    with pytest.raises(ChatmillError) as error:
        validate_mix(DEFAULT_PARAMS["mix"] | change)
    assert str(error.value) == message


def test_missing_mix_params_are_named():
    section = dict(DEFAULT_PARAMS["mix"])
    del section["on_empty"]
    with pytest.raises(ChatmillError, match=r"^params\.yaml: mix\.on_empty is missing$"):
        validate_mix(section)


# ---------------------------------------------------------------- mix.by: tokens, in the prompt format


def test_a_conversation_costs_its_tokens_as_the_prompt_format_writes_them(
    tiny_tokenizer, conversation_factory
):
    import pyarrow as pa

    batch = pa.RecordBatch.from_pylist(
        [conversation_factory("a"), conversation_factory("b", bot_replies=("One.", "Two."))],
        CONVERSATION_SCHEMA,
    )
    chatml = copy.deepcopy(tiny_tokenizer)
    prepare_tokenizer(chatml, "chatml", "Assistant")
    for tokenizer in (tiny_tokenizer, chatml):
        form = prompt_format(tokenizer)
        expected = [
            len(tokenizer(form.render_text(row), add_special_tokens=False)["input_ids"])
            for row in batch.to_pylist()
        ]
        assert conversation_costs(batch, "tokens", tokenizer) == expected
    assert conversation_costs(batch, "tokens", chatml) != conversation_costs(batch, "tokens", tiny_tokenizer)
    assert conversation_costs(batch, "conversations", chatml) == [1, 1]


def test_mix_by_tokens_refuses_a_models_base_made_for_another_format(
    tmp_path, tiny_tokenizer, conversation_factory
):
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    write_parquet(tmp_path / "trimmed.parquet", CONVERSATION_SCHEMA, [conversation_factory("a")])
    section = DEFAULT_PARAMS["mix"] | {"by": "tokens"}
    with pytest.raises(
        ChatmillError,
        match=r"^mix: .*base was made for prompt.format: pygmalion, but params.yaml has "
        r"prompt.format: chatml; run `dvc repro base-model`$",
    ):
        mix_file(
            tmp_path / "trimmed.parquet",
            tmp_path / "mixed",
            {"logs": 1.0},
            section,
            tmp_path / "base",
            {"format": "chatml"},
        )
    assert not (tmp_path / "mixed").exists()
