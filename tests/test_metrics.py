"""chatmill/metrics.py: the logbook's impressions as numbers, and the registry (METRICS) that the stage,
the report and the docs take them from."""

import io
import re

import pytest

from chatmill import metrics
from chatmill.metrics import HIGHER, LOWER, METRICS
from chatmill.report import Run, render_report

METRIC_KEYS = {
    "n_replies", "short_rate", "median_words", "p10_words", "p90_words", "distinct_1", "distinct_2", "rep_4",
    "cross_rep_4", "hit_max_tokens_rate", "accept_rate", "regens_to_accept", "n_prompts",
}  # fmt: skip


def row(prompt="p1", reply="a reply of enough words here", sample=0, setting="s", **fields) -> dict:
    """A sample row as sample_row writes it, with the flags derived from the reply unless given."""
    values = {
        "prompt_set": "heldout",
        "prompt_id": prompt,
        "kind": "conversation",
        "sample": sample,
        "setting": setting,
        "bot_name": "Aria",
        "prompt": f"Aria's Persona: ...\nYou: {prompt}?\nAria:",
        "reference": None,
        "reply": reply,
        "words": len(metrics.words(reply)),
        "short": metrics.is_short(reply, 5),
        "rep_4": metrics.rep_n(reply),
        "repetitive": False,
        "stop": "eos",
        "keyword_recall": None,
    }
    values |= fields
    values.setdefault("acceptable", not values["short"] and values["stop"] != "max_tokens")
    return values


# --- What the metrics are made of ----------------------------------------------------------------


@pytest.mark.parametrize("reply", ["...", "Yes.", "Hm?", "", "  ?! ", "*nods*"])
def test_ultra_short_replies_are_short_whatever_short_words_says(reply):
    assert metrics.is_short(reply, short_words=0)


def test_short_words_threshold():
    assert metrics.is_short("I do not know", short_words=5)
    assert not metrics.is_short("I really do not know", short_words=5)
    assert not metrics.is_short("Oh well.", short_words=0)


def test_a_reply_cut_off_by_max_new_tokens_is_short_only_when_ultra_short():
    assert not metrics.is_short("I do not know", short_words=5, cut_off=True)
    assert metrics.is_short("... ... ...", short_words=5, cut_off=True)


def test_words_ignore_punctuation_and_keep_contractions():
    assert metrics.words("Don't... go, Bob!") == ["don't", "go", "bob"]


def test_distinct_n_counts_ngrams_within_replies():
    # "a b c" -> (a,b) (b,c); "a b" -> (a,b); no bigram across the two replies
    assert metrics.distinct_n(["a b c", "A b."], 2) == pytest.approx(2 / 3)
    assert metrics.distinct_n(["a b c", "A b."], 1) == pytest.approx(3 / 5)
    assert metrics.distinct_n(["...", "Yes."], 2) == 0.0


def test_rep_n_is_the_share_of_repeated_4grams_in_a_reply():
    # 4-grams: abcd bcda cdab dabc abcd: one of five repeats an earlier one
    assert metrics.rep_n("a b c d a b c d") == pytest.approx(1 / 5)
    # 8 words, 5 4-grams, 2 distinct ones
    assert metrics.rep_n("she nods. she nods. she nods. she nods.") == pytest.approx(3 / 5)
    assert metrics.rep_n("no repeats in this reply") == 0.0
    assert metrics.rep_n("too short") == 0.0


def test_keyword_recall_accepts_alternatives():
    expect = ["flour", "egg|eggs", "milk"]
    assert metrics.keyword_recall("Mix the flour with two EGGS.", expect) == pytest.approx(2 / 3)
    assert metrics.keyword_recall("Anything.", []) is None


def test_cross_rep_counts_phrases_shared_with_other_prompts_only():
    rows = [
        row("p1", "she smiles and says hello"),  # 4-grams: [she smiles and says], [smiles and says hello]
        row("p1", "she smiles and says hello", sample=1),  # the same prompt again: not a mannerism
        row("p2", "she smiles and says goodbye"),  # shares [she smiles and says] with p1
        row("p3", "nothing in common at all"),
        row("p4", "Hm?"),  # no 4-gram: left out of the mean
    ]
    # p1: 1 of 2 shared, twice; p2: 1 of 2; p3: 0 of 2
    assert metrics.cross_rep(rows) == pytest.approx((0.5 + 0.5 + 0.5 + 0) / 4)
    assert metrics.mannerisms(rows) == [("she smiles and says", 2)]
    assert metrics.cross_rep([row("p1", "Hm?")]) == 0.0


def test_regens_to_accept_counts_samples_until_the_first_acceptable_one():
    rows = [
        row("p1", sample=1, acceptable=True),  # sample order, not row order, counts: p1 -> 2
        row("p1", sample=0, acceptable=False),
        row("p2", sample=0, acceptable=True),  # p2 -> 1
        row("p2", sample=1, acceptable=False),
        row("p3", sample=0, acceptable=False),  # p3: none of 2 -> 3
        row("p3", sample=1, acceptable=False),
        row("p1", sample=0, acceptable=True, setting="other"),  # another setting is another draw: 1
    ]
    assert metrics.regens_to_accept(rows) == pytest.approx((2 + 1 + 3 + 1) / 4)


def test_reply_metrics():
    rows = [
        row("p1", "..."),
        row("p2", "Hm?"),
        row("p3", "one two three four five six", stop="max_tokens"),
        row("p4", "a b c d e", keyword_recall=0.5),
    ]
    assert metrics.reply_metrics(rows) == {
        "n_prompts": 4,
        "n_replies": 4,
        "short_rate": 0.5,
        "median_words": 3.0,  # of 0, 1, 6 and 5 words
        "p10_words": 0.3,
        "p90_words": 5.7,
        "distinct_1": 1.0,
        "distinct_2": 1.0,
        "rep_4": 0.0,
        "cross_rep_4": 0.0,
        "hit_max_tokens_rate": 0.25,
        "accept_rate": 0.25,
        "regens_to_accept": 1.75,
        "keyword_recall": 0.5,
    }


def test_sample_metrics_pool_all_settings_and_sets():
    samples = [
        row("p1", "Yes.", setting="a"),
        row("p2", "I would love to come along with you", setting="b"),
        row("p1", "Let us go to the lake today", setting="a", prompt_set="zero_shot"),
    ]
    result = metrics.sample_metrics(samples)
    assert list(result["settings"]) == ["a", "b"]
    assert result["settings"]["a"]["n_replies"] == 2 and result["settings"]["a"]["short_rate"] == 0.5
    assert result["overall"]["n_replies"] == 3
    assert result["overall"]["short_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert list(result["prompt_sets"]) == ["heldout", "zero_shot"]
    heldout = result["prompt_sets"]["heldout"]
    assert heldout["n_replies"] == 2 and list(heldout["settings"]) == ["a", "b"]
    assert set(heldout["settings"]["a"]) == METRIC_KEYS


# --- The registry ------------------------------------------------------------------------------------

# Five replies, every flag set by hand (not derived), so that each metric can be counted on paper.
HAND_ROWS = [
    # (heldout, p1): sample 0 not acceptable, sample 1 is -> 2 draws
    row("p1", "Hm?", sample=0, short=True, acceptable=False),  # 1 word
    row("p1", "The cat sat on the mat.", sample=1, short=False, acceptable=True),  # 6 words
    # (heldout, p2): neither acceptable -> 2 + 1 = 3 draws. 8 words, cut off; 4-grams tcso csot sotc
    # otcs tcso: 1 of 5 repeats
    row(
        "p2",
        "The cat sat on the cat sat on",
        sample=0,
        short=False,
        stop="max_tokens",
        acceptable=False,
        rep_4=0.2,
    ),
    row("p2", "A dog ran.", sample=1, short=True, acceptable=False),  # 3 words
    # (zero_shot, t1): the first sample is acceptable -> 1 draw. 5 words
    row(
        "t1",
        "Flour and eggs, then bake.",
        sample=0,
        short=False,
        acceptable=True,
        prompt_set="zero_shot",
        kind="recipe",
        keyword_recall=2 / 3,
    ),
]
HAND_COUNTS = {
    "n_prompts": 3,  # (heldout, p1), (heldout, p2), (zero_shot, t1)
    "n_replies": 5,
    "short_rate": 2 / 5,  # "Hm?" and "A dog ran."
    # words per reply: 1, 6, 8, 3, 5 -> sorted 1 3 5 6 8; linear interpolation between ranks
    "median_words": 5.0,
    "p10_words": 1 + 0.4 * (3 - 1),  # rank 0.4
    "p90_words": 6 + 0.6 * (8 - 6),  # rank 3.6
    # 23 words; distinct: hm the cat sat on mat a dog ran flour and eggs then bake
    "distinct_1": 14 / 23,
    # bigrams: 0 + 5 + 7 + 2 + 4 = 18; distinct: the five of the mat reply (the cat-sat on reply adds
    # none), a-dog dog-ran, and the four of the recipe
    "distinct_2": 11 / 18,
    # replies of 4 words or more: the mat reply 0, the cat-sat-on reply 0.2, the recipe 0
    "rep_4": 0.2 / 3,
    # [the cat sat on] and [cat sat on the] are in replies to p1 and p2: the mat reply 2 of its 3
    # distinct 4-grams, the cat-sat-on reply 2 of its 4 distinct, the recipe 0 of 2
    "cross_rep_4": (2 / 3 + 2 / 4 + 0) / 3,
    "hit_max_tokens_rate": 1 / 5,
    "accept_rate": 2 / 5,
    "regens_to_accept": (2 + 3 + 1) / 3,
    "keyword_recall": 2 / 3,  # the only reply with expected words
}


def test_the_registry_has_one_entry_per_metric_with_help_and_definition():
    names = [metric.name for metric in METRICS]
    assert len(names) == len(set(names)) and set(names) == set(HAND_COUNTS)
    for metric in METRICS:
        assert metric.better in (LOWER, HIGHER, None)
        assert metric.help.strip() and "\n" not in metric.help and metric.definition.strip()


@pytest.mark.parametrize("metric", METRICS, ids=lambda metric: metric.name)
def test_each_metric_computes_its_definition_on_hand_counted_rows(metric):
    assert metric.value(HAND_ROWS) == pytest.approx(HAND_COUNTS[metric.name], abs=1e-12)


def test_reply_metrics_keys_and_values_match_a_hand_count():
    assert metrics.reply_metrics(HAND_ROWS) == {name: round(value, 6) for name, value in HAND_COUNTS.items()}
    # A group with no expected words does not measure keyword_recall: the key is left out.
    assert metrics.reply_metrics(HAND_ROWS[:4]) == {
        "n_prompts": 2,
        "n_replies": 4,
        "short_rate": 0.5,
        "median_words": 4.5,  # 1 3 6 8
        "p10_words": 1.6,  # rank 0.3: 1 + 0.3 * 2
        "p90_words": 7.4,  # rank 2.7: 6 + 0.7 * 2
        "distinct_1": round(9 / 18, 6),  # hm the cat sat on mat a dog ran
        "distinct_2": round(7 / 14, 6),
        "rep_4": 0.1,  # (0 + 0.2) / 2
        "cross_rep_4": round((2 / 3 + 2 / 4) / 2, 6),
        "hit_max_tokens_rate": 0.25,
        "accept_rate": 0.25,
        "regens_to_accept": 2.5,  # p1: 2, p2: 3
    }


def test_the_directions_are_the_logbook_ones():
    assert {name for name, better in metrics.BETTER.items() if better == LOWER} == {
        "short_rate", "rep_4", "cross_rep_4", "hit_max_tokens_rate", "regens_to_accept", "eval_loss",
        "perplexity",
    }  # fmt: skip
    assert {name for name, better in metrics.BETTER.items() if better == HIGHER} == {
        "distinct_1", "distinct_2", "accept_rate", "keyword_recall",
    }  # fmt: skip
    assert {name for name, better in metrics.BETTER.items() if better is None} == {
        "median_words", "p10_words", "p90_words", "n_prompts", "n_replies",
    }  # fmt: skip


@pytest.mark.parametrize("step", [1, -1], ids=["every metric rises", "every metric falls"])
def test_the_report_colours_each_change_by_the_metrics_direction(step):
    """A comparison in which B moves every metric the same way: each change cell of the page is green
    (better) or red (worse) exactly as the metric's `better` says, and uncoloured without one."""
    a = {metric.name: 10 for metric in METRICS}
    b = {name: value + step for name, value in a.items()}
    runs = [Run(label, {"overall": values}, [], {}) for label, values in (("A", a), ("B", b))]
    page = render_report(runs, "A vs B")
    delta = re.search(r'<tr class="delta"><td class="group">all replies</td><td>change</td>(.*?)</tr>', page)
    assert delta, "no change row for all replies"
    cells = re.findall(r'<td class="([^"]*)">([^<]*)</td>', delta[1])
    expected = []
    for metric in METRICS:
        if metric.name == "n_replies":
            expected.append(None)  # a count: no change shown
        elif metric.better is None:
            expected.append(("", f"{step:+d}"))
        else:
            better = (step < 0) == (metric.better == LOWER)
            expected.append(("better" if better else "worse", f"{step:+d}"))
    assert cells == [cell for cell in expected if cell is not None]
    assert delta[1].count("<td") == len(METRICS)  # one cell per column, n_replies' empty


# --- The headline numbers: DVC's metrics -----------------------------------------------------------


def test_the_headline_is_the_registry_s_few_numbers_of_the_breakdown():
    breakdown = {"eval_loss": 2.0, "perplexity": 7.389056, **metrics.sample_metrics(HAND_ROWS)}

    assert metrics.headline_metrics(breakdown) == {
        "eval_loss": 2.0,
        "median_words": HAND_COUNTS["median_words"],
        "distinct_2": round(HAND_COUNTS["distinct_2"], 6),
        "regens_to_accept": HAND_COUNTS["regens_to_accept"],
        "heldout": {"short_rate": 0.5},  # "Hm?" and "A dog ran." of the four held-out replies
    }
    # A run without held-out replies has no heldout group: nothing is made up for it.
    without = {"eval_loss": 2.0, "perplexity": 7.389056, **metrics.sample_metrics(HAND_ROWS[4:])}
    assert "heldout" not in metrics.headline_metrics(without)


def test_headline_groups_are_overall_or_a_prompt_set():
    from chatmill.evaluation import PROMPT_SETS

    groups = {group for metric in METRICS for group in metric.headline}
    assert groups <= {metrics.OVERALL, *PROMPT_SETS}


def test_the_headline_fits_dvc_exp_show_in_160_columns(monkeypatch):
    """`dvc exp show --only-changed` as DVC renders it (its own table code), for a baseline and two
    experiments that change two params: at 160 columns every headline metric and both params are shown
    whole, not collapsed into "…". (tests/test_end_to_end.py runs the real command.)"""
    from dvc.commands.experiments.show import show_experiments
    from dvc.compare import TabularData
    from dvc.ui import ui
    from rich.console import Console

    from chatmill.compare import flatten

    breakdown = {"eval_loss": 2.345678, "perplexity": 10.4, **metrics.sample_metrics(HAND_ROWS)}
    names = list(flatten(metrics.headline_metrics(breakdown)))
    params = ["trim.enabled", "trim.threshold"]
    fixed = ["Experiment", "rev", "typ", "Created", "parent", "State", "Executor"]
    table = TabularData([*fixed, *names, *params], fill_value="-")
    rows = [
        ("workspace", "workspace", "baseline", "-", 0.1, "True", "8"),
        ("main", "main", "baseline", "04:12 PM", 0.2, "True", "8"),
        ("eager-moth", "1a2b3c4", "branch_commit", "04:20 PM", 0.3, "True", "150"),
        ("vocal-fern", "5d6e7f8", "branch_base", "04:31 PM", 0.4, "False", "8"),
    ]
    for name, rev, typ, created, offset, enabled, threshold in rows:
        values = [f"{offset + index:.5g}" for index in range(len(names))]  # every metric changes
        table.append([name, rev, typ, created, "", "", "", *values, enabled, threshold])
    screen = Console(width=160, file=io.StringIO())
    monkeypatch.setitem(ui.__dict__, "rich_console", screen)  # ui.rich_console is a cached property
    monkeypatch.setattr(ui, "_enabled", True)  # as the dvc command has it

    show_experiments(table, {"metrics": names, "params": params, "deps": []}, pager=False, only_changed=True)

    header = next(line for line in screen.file.getvalue().splitlines() if "Experiment" in line)
    assert header.split() == ["Experiment", "Created", *names, *params]
