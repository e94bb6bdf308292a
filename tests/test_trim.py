import json
from collections import Counter

import pytest
from conftest import run_stage, write_workspace

from chatmill.errors import ChatmillError
from chatmill.io import write_parquet
from chatmill.schema import CONVERSATION_SCHEMA
from chatmill.trim import (
    histogram_csv,
    keep_probability,
    keeps,
    median_reply_length,
    validate_trim,
)

DEFAULTS = {"enabled": True, "unit": "words", "threshold": 8, "ramp": 40, "curve": "linear", "seed": 0}


@pytest.mark.parametrize(
    "median, expected", [(0, 0.0), (8, 0.0), (9, 1 / 40), (28, 0.5), (47, 39 / 40), (48, 1.0), (500, 1.0)]
)
def test_defaults_reproduce_the_original_length_filter(median, expected):
    # data-toolbox LengthFilter: P(keep) = (m - 8) / 40 between 8 and 48 words
    assert keep_probability(median, 8, 40, "linear") == pytest.approx(expected)


def test_cosine_curve_has_the_same_ends_and_midpoint():
    assert keep_probability(8, 8, 40, "cosine") == 0.0
    assert keep_probability(28, 8, 40, "cosine") == pytest.approx(0.5)
    assert keep_probability(48, 8, 40, "cosine") == 1.0
    assert keep_probability(12, 8, 40, "cosine") < keep_probability(12, 8, 40, "linear")


def test_median_is_over_bot_replies_in_words_or_chars(conversation_factory):
    conversation = conversation_factory("a", bot_replies=("one", "one two three", "one two three four five"))
    assert median_reply_length(conversation, "words") == 3
    assert median_reply_length(conversation, "chars") == len("one two three")


def test_keep_rate_follows_the_curve_and_decision_is_a_pure_function_of_seed_and_id(conversation_factory):
    reply = " ".join(["word"] * 28)  # median 28 words: P(keep) = 0.5
    conversations = [conversation_factory(f"id-{i}", bot_replies=(reply,)) for i in range(4000)]
    kept = [keeps(c, 28, DEFAULTS, True) for c in conversations]
    assert 0.47 < sum(kept) / len(kept) < 0.53
    # same decision in reverse order, and a different seed gives a different selection
    assert [keeps(c, 28, DEFAULTS, True) for c in reversed(conversations)] == kept[::-1]
    assert [keeps(c, 28, {**DEFAULTS, "seed": 1}, True) for c in conversations] != kept


def test_untrimmed_sources_and_disabled_trim_keep_everything(conversation_factory):
    short = conversation_factory("s", bot_replies=("...",))
    assert not keeps(short, 1, DEFAULTS, True)
    assert keeps(short, 1, DEFAULTS, False)
    assert keeps(short, 1, {**DEFAULTS, "enabled": False}, True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"threshold": -1}, "trim.threshold must be >= 0, got -1"),
        ({"ramp": -5}, "trim.ramp must be >= 0"),
        ({"unit": "tokens"}, "trim.unit is 'tokens'"),
        ({"curve": "cubic"}, "trim.curve is 'cubic'"),
        ({"threshold": True}, "trim.threshold must be int or float"),
    ],
)
def test_bad_trim_params_give_one_line_errors(change, message):
    with pytest.raises(ChatmillError, match=message):
        validate_trim({**DEFAULTS, **change})


def test_histogram_csv_has_both_series():
    text = histogram_csv(Counter({0: 5, 2: 1}), Counter({2: 1}), bin_width=6)
    lines = text.splitlines()
    assert lines[0] == "median_reply_length,before,after"
    assert lines[1] == "0,5,0" and lines[3] == "12,1,1"


def test_a_trim_that_keeps_nothing_fails_clearly_and_writes_nothing(
    tmp_path, monkeypatch, capsys, conversation_factory
):
    monkeypatch.chdir(tmp_path)
    sources = {"logs": {"uri": "logs.jsonl", "format": "pippa", "trim": True, "weight": 1}}
    write_workspace(tmp_path, {"trim": {**DEFAULTS, "threshold": 150}, "sources": sources}, replace=True)
    (tmp_path / "data/clean").mkdir(parents=True)
    rows = [conversation_factory(f"c{i}", bot_replies=("A short reply.",)) for i in range(5)]
    write_parquet(tmp_path / "data/clean/conversations.parquet", CONVERSATION_SCHEMA, rows)
    with pytest.raises(SystemExit) as exit_info:
        run_stage("length_trim")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "error: length-trim kept 0 of 5 conversations; lower trim.threshold (now 150 words)"
    )
    assert not (tmp_path / "data/trimmed").exists()


def test_a_source_trimmed_to_nothing_is_in_stats_json_with_out_0_and_a_warning(
    tmp_path, monkeypatch, capsys, conversation_factory
):
    monkeypatch.chdir(tmp_path)
    sources = {
        name: {"uri": f"{name}.jsonl", "format": "sharegpt", "trim": trim, "weight": 1}
        for name, trim in (("logs", True), ("chitchat", True), ("tasks", False), ("archive", True))
    }
    write_workspace(tmp_path, {"trim": DEFAULTS, "sources": sources}, replace=True)
    (tmp_path / "data/clean").mkdir(parents=True)
    long_reply = " ".join(["word"] * 60)
    rows = [conversation_factory(f"l{i}", source="logs", bot_replies=(long_reply,)) for i in range(3)]
    rows += [conversation_factory(f"c{i}", source="chitchat", bot_replies=("Yes.",)) for i in range(4)]
    rows += [conversation_factory(f"t{i}", source="tasks", bot_replies=("Done.",)) for i in range(2)]
    write_parquet(tmp_path / "data/clean/conversations.parquet", CONVERSATION_SCHEMA, rows)
    run_stage("length_trim")
    stats = json.loads((tmp_path / "data/trimmed/stats.json").read_text())
    assert stats["sources"] == {
        "archive": {"in": 0, "out": 0, "trimmed": True},  # clean kept none of it
        "chitchat": {"in": 4, "out": 0, "trimmed": True},
        "logs": {"in": 3, "out": 3, "trimmed": True},
        "tasks": {"in": 2, "out": 2, "trimmed": False},
    }
    assert capsys.readouterr().err == (
        "warning: length-trim kept 0 of the 4 conversations of source 'chitchat' (trim.threshold is 8 "
        "words); mix.on_empty says what mix does\n"
    )
