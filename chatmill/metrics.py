"""sample-eval's metrics, the logbook's impressions as numbers: one registry (METRICS) that defines
each metric once, with its direction, help text and the groups in which it is a headline number.
The stage computes them from it, the report takes its columns and colours from it, and
docs/sample-eval.md's table is written from it (`make docs`).

The stage writes two files: the full breakdown (every metric overall, per setting, per prompt set and
per setting within each set: reports/sample-eval.json, read by the report and `make compare`) and
its headline numbers (metrics/sample-eval.json: what DVC shows in `dvc exp show` and `dvc metrics
diff`, a dozen columns rather than hundreds).

A sample row is one reply with its flags (chatmill.evaluation.sample_row): words, short, rep_4,
repetitive, stop, acceptable, keyword_recall, and the prompt it answers.
"""

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

Row = dict[str, Any]
REP_N = 4  # rep_4 and cross_rep_4 count repeated word 4-grams
MANNERISMS = 5  # phrases per setting shown in the report
LOWER, HIGHER = "lower", "higher"  # which way a metric is better; None: neither (a length, a count)
OVERALL = "overall"  # the group of all replies; the other headline groups are prompt sets
WORD = re.compile(r"\w+(?:['’]\w+)*")  # "don't" is one word; "..." is none


# --- What the metrics are made of --------------------------------------------------------------------


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[start : start + n]) for start in range(len(tokens) - n + 1)]


def is_short(text: str, short_words: int, cut_off: bool = False) -> bool:
    """At most one word whatever short_words says: "...", "Yes.", "Hm?" and an empty reply are the
    ultra-short replies the logbook complains about. Or under short_words words, unless the reply was
    cut off by max_new_tokens: then the model was not done, and the length says nothing."""
    count = len(words(text))
    return count <= 1 or (count < short_words and not cut_off)


def distinct_n(replies: Iterable[str], n: int) -> float:
    """Unique word n-grams / all word n-grams, n-grams taken within each reply; 0 when there are none."""
    grams = [gram for reply in replies for gram in ngrams(words(reply), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def rep_n(text: str, n: int = REP_N) -> float:
    """Share of a reply's word n-grams that repeat an earlier one in the same reply (0: none repeats,
    near 1: one phrase over and over); 0 for a reply shorter than n words."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def keyword_recall(text: str, expect: Iterable[str]) -> float | None:
    """Share of the expected words ("a|b": either) found among the reply's words; None without any."""
    expected = [set(option.lower().split("|")) for option in expect]
    if not expected:
        return None
    found = set(words(text))
    return sum(bool(options & found) for options in expected) / len(expected)


def prompt_grams(rows: list[Row], n: int = REP_N) -> dict[tuple[str, ...], set[tuple[str, str]]]:
    """For every word n-gram, the prompts (set, id) whose replies contain it."""
    prompts: dict[tuple[str, ...], set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        for gram in ngrams(words(row["reply"]), n):
            prompts[gram].add((row["prompt_set"], row["prompt_id"]))
    return prompts


def cross_rep(rows: list[Row], n: int = REP_N) -> float:
    """The mannerism the logbook saw spread: mean, over replies of n words or more, of the share of a
    reply's distinct n-grams that also occur in a reply to another prompt of the same group."""
    prompts = prompt_grams(rows, n)
    shares = []
    for row in rows:
        grams = set(ngrams(words(row["reply"]), n))
        if grams:
            own = (row["prompt_set"], row["prompt_id"])
            shares.append(sum(bool(prompts[gram] - {own}) for gram in grams) / len(grams))
    return sum(shares) / len(shares) if shares else 0.0


def mannerisms(rows: list[Row], top: int = MANNERISMS) -> list[tuple[str, int]]:
    """The n-grams found in replies to the most prompts (at least two), with that number of prompts."""
    counts = Counter({" ".join(gram): len(where) for gram, where in prompt_grams(rows).items()})
    return [(phrase, count) for phrase, count in counts.most_common(top) if count >= 2]


def regens_to_accept(rows: list[Row]) -> float:
    """Mean over (prompt, setting) of the samples drawn until the first acceptable one, in sample
    order; samples_per_prompt + 1 when none is (a lower bound: "more than every sample drawn")."""
    draws: dict[tuple[str, str, str], list[tuple[int, bool]]] = defaultdict(list)
    for row in rows:
        draws[(row["prompt_set"], row["prompt_id"], row["setting"])].append(
            (row["sample"], row["acceptable"])
        )
    counts = []
    for samples in draws.values():
        flags = [acceptable for _, acceptable in sorted(samples)]
        counts.append(flags.index(True) + 1 if True in flags else len(flags) + 1)
    return sum(counts) / len(counts)


def prompt_count(rows: list[Row]) -> int:
    """The distinct prompts replied to (a prompt is its set and id)."""
    return len({(row["prompt_set"], row["prompt_id"]) for row in rows})


def share(rows: list[Row], test: Callable[[Row], bool]) -> float:
    return sum(map(test, rows)) / len(rows)


def percentile(rows: list[Row], q: float) -> float:
    """Reply length in words at percentile q (linear interpolation)."""
    return float(np.percentile([row["words"] for row in rows], q))


def mean_rep_4(rows: list[Row]) -> float:
    long_enough = [row["rep_4"] for row in rows if len(words(row["reply"])) >= REP_N]
    return sum(long_enough) / len(long_enough) if long_enough else 0.0


def mean_keyword_recall(rows: list[Row]) -> float | None:
    recalls = [row["keyword_recall"] for row in rows if row["keyword_recall"] is not None]
    return sum(recalls) / len(recalls) if recalls else None


# --- The registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    better: str | None  # LOWER, HIGHER or None
    help: str  # one line: the report's column hover text
    definition: str  # the full definition, for docs/sample-eval.md
    value: Callable[[list[Row]], float | int | None]  # of a group of sample rows; None: not measured
    # The groups (OVERALL or a prompt set) whose value is a headline number: one column each in
    # `dvc exp show`. Few: the headline with two changed params fits a 160-column terminal.
    headline: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunMetric:
    """A number of the whole run rather than of a group of replies."""

    name: str
    better: str
    definition: str
    headline: bool


METRICS: tuple[Metric, ...] = (
    Metric(
        "short_rate",
        LOWER,
        'share of replies of one word at most ("...", "Yes.") or ended under eval.short_words',
        'share of replies of one word at most ("...", "Yes.", "Hm?") or under `eval.short_words` words; '
        "a reply cut off by `eval.max_new_tokens` only counts when it has one word at most",
        lambda rows: share(rows, lambda row: row["short"]),
        headline=("heldout",),  # the role-play replies: the logbook's "...", "Yes.", "Hm?"
    ),
    Metric(
        "median_words",
        None,
        "median reply length in words",
        "reply length in words, median (linear interpolation)",
        lambda rows: percentile(rows, 50),
        headline=(OVERALL,),
    ),
    Metric(
        "p10_words",
        None,
        "10th percentile of reply length in words",
        "reply length in words, 10th percentile",
        lambda rows: percentile(rows, 10),
    ),
    Metric(
        "p90_words",
        None,
        "90th percentile of reply length in words",
        "reply length in words, 90th percentile",
        lambda rows: percentile(rows, 90),
    ),
    Metric(
        "distinct_1",
        HIGHER,
        "distinct words / all words",
        "distinct words / all words over all the group's replies",
        lambda rows: distinct_n((row["reply"] for row in rows), 1),
    ),
    Metric(
        "distinct_2",
        HIGHER,
        "distinct word bigrams / all word bigrams (within replies)",
        "distinct word bigrams / all word bigrams, bigrams taken within each reply, over all the "
        "group's replies",
        lambda rows: distinct_n((row["reply"] for row in rows), 2),
        headline=(OVERALL,),
    ),
    Metric(
        "rep_4",
        LOWER,
        "mean share of a reply's word 4-grams that repeat an earlier one in it",
        "within a reply, the share of its word 4-grams that repeat an earlier one (1 - distinct / all); "
        "mean over replies of 4 words or more",
        mean_rep_4,
    ),
    Metric(
        "cross_rep_4",
        LOWER,
        "mean share of a reply's 4-grams also found in replies to other prompts (mannerisms)",
        "the mannerism that spreads across replies: the share of a reply's distinct 4-grams that also "
        "occur in a reply to another prompt of the group; mean over replies of 4 words or more. The "
        "report lists the phrases found in replies to the most prompts",
        cross_rep,
    ),
    Metric(
        "hit_max_tokens_rate",
        LOWER,
        "share of replies cut off by eval.max_new_tokens",
        "share of replies cut off by `eval.max_new_tokens` (no end-of-turn token, no `You:` line)",
        lambda rows: share(rows, lambda row: row["stop"] == "max_tokens"),
    ),
    Metric(
        "accept_rate",
        HIGHER,
        "share of replies that are acceptable: not short, not repetitive, ended cleanly",
        "share of acceptable replies: not short, `rep_4` at most `eval.max_rep_4`, ended cleanly",
        lambda rows: share(rows, lambda row: row["acceptable"]),
    ),
    Metric(
        "regens_to_accept",
        LOWER,
        "mean samples drawn until an acceptable one (samples_per_prompt + 1: none)",
        '"needs quite a few regens": for each prompt and setting, the number of samples drawn (in order) '
        "until the first acceptable one, `eval.samples_per_prompt` + 1 when none is; the mean. A lower "
        "bound when many prompts reach the cap: raise `samples_per_prompt`",
        regens_to_accept,
        headline=(OVERALL,),
    ),
    Metric(
        "keyword_recall",
        HIGHER,
        "mean share of a task's expected words in the reply (zero- and few-shot tasks)",
        "zero- and few-shot only: the share of a task's `expect` words found in the reply, averaged; a "
        "rough check that a recipe names its ingredients or code defines a function, not a "
        "hallucination detector",
        mean_keyword_recall,
    ),
    Metric(
        "n_prompts",
        None,
        "prompts replied to",
        "prompts replied to; for `heldout`, fewer than `eval.prompts` when the eval shard holds fewer "
        "conversations with a user turn to reply to (the stage then warns)",
        prompt_count,
    ),
    Metric("n_replies", None, "replies measured", "replies measured", len),
)
RUN_METRICS = (
    RunMetric(
        "eval_loss", LOWER, "mean loss per supervised token on the eval shard (`data/shards/eval`)", True
    ),
    RunMetric("perplexity", LOWER, "exp(eval_loss)", False),
)
BETTER = {metric.name: metric.better for metric in METRICS} | {
    metric.name: metric.better for metric in RUN_METRICS
}


def reply_metrics(rows: list[Row]) -> dict[str, Any]:
    """Every metric of a group of sample rows that it measures, rounded to 6 places."""
    values = {metric.name: metric.value(rows) for metric in METRICS}
    return {name: round(value, 6) for name, value in values.items() if value is not None}


def group_by(rows: list[Row], key: str) -> dict[str, list[Row]]:
    """Rows per value of `key`, in the order the values first appear."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def sample_metrics(samples: list[Row]) -> dict[str, Any]:
    """Metrics over all replies, per setting, per prompt set, and per setting within each set."""
    return {
        "overall": reply_metrics(samples),
        "settings": {name: reply_metrics(rows) for name, rows in group_by(samples, "setting").items()},
        "prompt_sets": {
            name: {
                **reply_metrics(rows),
                "settings": {
                    setting: reply_metrics(group) for setting, group in group_by(rows, "setting").items()
                },
            }
            for name, rows in group_by(samples, "prompt_set").items()
        },
    }


def headline_metrics(breakdown: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a full breakdown (sample_metrics and the run metrics): the run metrics
    and the OVERALL ones at the top level, each prompt set's under its name."""
    headline = {metric.name: breakdown[metric.name] for metric in RUN_METRICS if metric.headline}
    groups = {OVERALL: breakdown["overall"], **breakdown["prompt_sets"]}
    for metric in METRICS:
        for group in metric.headline:
            value = groups.get(group, {}).get(metric.name)
            if value is not None:  # a prompt set the run did not have, or a metric it does not measure
                target = headline if group == OVERALL else headline.setdefault(group, {})
                target[metric.name] = value
    return headline


def setting_mannerisms(samples: list[Row]) -> dict[str, list[tuple[str, int]]]:
    return {name: mannerisms(rows) for name, rows in group_by(samples, "setting").items()}


def docs_table() -> str:
    """The Markdown table of every metric, for docs/sample-eval.md."""
    lines = ["| metric | better | headline in | definition |", "|---|---|---|---|"]
    for metric in METRICS:
        where = ", ".join(metric.headline) or "—"
        lines.append(f"| `{metric.name}` | {metric.better or '—'} | {where} | {metric.definition} |")
    for run_metric in RUN_METRICS:
        lines.append(
            f"| `{run_metric.name}` | {run_metric.better} | {'run' if run_metric.headline else '—'} | "
            f"{run_metric.definition} (of the whole run) |"
        )
    return "\n".join(lines) + "\n"
