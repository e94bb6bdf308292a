"""sample-eval's HTML report: one self-contained page (inline CSS and SVG, no script, nothing fetched)
that shows the metric table, reply-length histograms, the phrases repeated across replies and every
sample side by side: per prompt, one column per sampling setting; given two runs (two models, parts
or experiments), one row per setting with the two runs next to each other and the change between them
in the table.
"""

import html
import math
from dataclasses import dataclass
from typing import Any

from chatmill.metrics import BETTER, LOWER, METRICS

COLOURS = ("#3b6fb6", "#d9822b")  # run A, run B
BINS = 20
CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics td.group, table.metrics td.run { text-align: left; white-space: nowrap; }
tr.section th { text-align: left; background: #eef2f8; }
tr.delta td { background: #f6f6f6; font-size: .9em; }
td.better { color: #17803d; } td.worse { color: #b42318; }
.legend span { display: inline-block; padding: 0 .5em; color: white; border-radius: 3px; }
.histograms { display: flex; flex-wrap: wrap; gap: .5em; }
.histograms figure { margin: 0; } figcaption { font-size: .85em; }
.prompt { margin: 1.5em 0; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: inherit; }
.context { background: #f4f4f4; padding: .4em; max-height: 12em; overflow: auto; font-size: .9em;
  display: flex; flex-direction: column-reverse; }  /* scrolled to the end: the turn replied to */
.reference { border-left: 3px solid #999; padding-left: .5em; color: #555; }
table.samples { table-layout: fixed; width: 100%; } table.samples th.setting { width: 11em; }
.sample { border-top: 1px dashed #ccc; padding: .3em 0; }
.sample:first-child { border-top: none; }
.badge { font-size: .75em; border-radius: 3px; padding: 0 .3em; margin-right: .3em; background: #eee; }
.badge.ok { background: #dcf2e3; } .badge.bad { background: #fbe0dd; }
"""


@dataclass
class Run:
    label: str
    metrics: dict[str, Any]
    samples: list[dict[str, Any]]
    mannerisms: dict[str, list[tuple[str, int]]]  # per setting: phrase, number of prompts


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:d}" if isinstance(value, int) else f"{value:.4g}"


def sections(metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The metric table's sections, each {row label: metrics}: all replies and per setting, per prompt
    set, then per setting within each prompt set."""
    table = {
        "all replies and per setting": {
            "all replies": metrics.get("overall", {}),
            **metrics.get("settings", {}),
        }
    }
    prompt_sets = metrics.get("prompt_sets", {})
    table["per prompt set"] = prompt_sets
    for name, values in prompt_sets.items():
        table[f"prompt set {name}, per setting"] = values.get("settings", {})
    return table


def change_cell(metric: str, a: Any, b: Any) -> str:
    if a is None or b is None or metric == "n_replies":
        return "<td></td>"
    change = b - a
    verdict = ""
    better = BETTER.get(metric)
    if change and better:
        verdict = "better" if (change < 0) == (better == LOWER) else "worse"
    return f'<td class="{verdict}">{f"{change:+.4g}" if change else "0"}</td>'


def metric_table(runs: list[Run]) -> str:
    """One row per group and run; with two runs a row with the change, green where it is better."""
    names = "".join(
        f'<th title="{esc(metric.help)}">{esc(metric.name).replace("_", "_<wbr>")}</th>' for metric in METRICS
    )
    run_column = len(runs) > 1
    lines = [f'<table class="metrics"><tr><th>group</th>{"<th>run</th>" if run_column else ""}{names}</tr>']
    tables = [sections(run.metrics) for run in runs]
    for title in dict.fromkeys(title for table in tables for title in table):
        lines.append(
            f'<tr class="section"><th colspan="{len(METRICS) + 1 + run_column}">{esc(title)}</th></tr>'
        )
        for label in dict.fromkeys(label for table in tables for label in table.get(title, {})):
            values = [table.get(title, {}).get(label, {}) for table in tables]
            for run, numbers in zip(runs, values, strict=True):
                run_cell = f'<td class="run">{esc(run.label)}</td>' if run_column else ""
                cells = "".join(f"<td>{number(numbers.get(metric.name))}</td>" for metric in METRICS)
                lines.append(f'<tr><td class="group">{esc(label)}</td>{run_cell}{cells}</tr>')
            if len(runs) == 2:
                cells = "".join(
                    change_cell(metric.name, values[0].get(metric.name), values[1].get(metric.name))
                    for metric in METRICS
                )
                lines.append(
                    f'<tr class="delta"><td class="group">{esc(label)}</td><td>change</td>{cells}</tr>'
                )
    return "\n".join(lines) + "</table>"


def histogram(counts: list[list[int]], width: int, title: str) -> str:
    """An inline SVG bar chart of reply lengths: one bar per run in every bin of `width` words."""
    bins = [[0] * BINS for _ in counts]
    for run, values in enumerate(counts):
        for value in values:
            bins[run][min(value // width, BINS - 1)] += 1
    top = max(max(row) for row in bins) or 1
    chart_w, chart_h, bar = 200, 80, 200 / BINS / len(counts)
    rects = []
    for run, row in enumerate(bins):
        for index, count in enumerate(row):
            height = chart_h * count / top
            x = 20 + index * chart_w / BINS + run * bar
            rects.append(
                f'<rect x="{x:.1f}" y="{10 + chart_h - height:.1f}" width="{bar - 0.5:.1f}" '
                f'height="{height:.1f}" fill="{COLOURS[run]}">'
                f"<title>{index * width}–{(index + 1) * width - 1} words: {count}</title></rect>"
            )
    return (
        f'<figure><svg width="{chart_w + 30}" height="{chart_h + 30}" '
        f'role="img" aria-label="{esc(title)}">'
        f'<line x1="20" y1="{chart_h + 10}" x2="{chart_w + 20}" y2="{chart_h + 10}" stroke="#888"/>'
        + "".join(rects)
        + f'<text x="20" y="{chart_h + 24}" font-size="10">0</text>'
        f'<text x="{chart_w + 20}" y="{chart_h + 24}" font-size="10" text-anchor="end">'
        f"{BINS * width}+ words</text>"
        f'<text x="18" y="16" font-size="10" text-anchor="end">{top}</text>'
        f"</svg><figcaption>{esc(title)}</figcaption></figure>"
    )


def histograms(runs: list[Run]) -> str:
    """Reply lengths, one row of charts per prompt set, one chart per setting, on shared bins so that
    the charts compare."""
    rows = [row for run in runs for row in run.samples]
    width = max(1, math.ceil((max((row["words"] for row in rows), default=0) + 1) / BINS))
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    parts = []
    for prompt_set in dict.fromkeys(row["prompt_set"] for row in rows):
        figures = "".join(
            histogram(
                [
                    [
                        row["words"]
                        for row in run.samples
                        if (row["prompt_set"], row["setting"]) == (prompt_set, name)
                    ]
                    for run in runs
                ],
                width,
                name,
            )
            for name in settings
        )
        parts.append(f'<h3>{esc(prompt_set)}</h3><div class="histograms">{figures}</div>')
    return "\n".join(parts)


def mannerism_table(runs: list[Run]) -> str:
    header = "".join(f"<th>{esc(run.label)}</th>" for run in runs)
    settings = list(dict.fromkeys(name for run in runs for name in run.mannerisms))
    lines = [f'<table class="mannerisms"><tr><th>setting</th>{header}</tr>']
    for name in settings:
        cells = "".join(
            "<td>"
            + "<br>".join(
                f"“{esc(phrase)}” ({count} prompts)" for phrase, count in run.mannerisms.get(name, [])
            )
            + "</td>"
            for run in runs
        )
        lines.append(f"<tr><th>{esc(name)}</th>{cells}</tr>")
    return "\n".join(lines) + "</table>"


def sample_cell(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<td class="missing">–</td>'
    parts = []
    for row in sorted(rows, key=lambda row: row["sample"]):
        badges = [("ok", "acceptable")] if row["acceptable"] else []
        badges += [("bad", "short")] if row["short"] else []
        badges += [("bad", f"rep_4 {row['rep_4']:.2f}")] if row["repetitive"] else []
        badges += [("bad", "cut off")] if row["stop"] == "max_tokens" else []
        badges.append(("", f"{row['words']} words"))
        badge_html = "".join(f'<span class="badge {kind}">{esc(text)}</span>' for kind, text in badges)
        parts.append(f'<div class="sample">{badge_html}<pre class="reply">{esc(row["reply"])}</pre></div>')
    return f"<td>{''.join(parts)}</td>"


def prompt_block(runs: list[Run], key: tuple[str, str], settings: list[str]) -> str:
    """One prompt: its context, the real reply if held out, and the samples side by side."""
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for index, run in enumerate(runs):
        for row in run.samples:
            if (row["prompt_set"], row["prompt_id"]) == key:
                cells.setdefault((index, row["setting"]), []).append(row)
    first = next(iter(cells.values()))[0]
    lines = [
        f'<div class="prompt" id="{esc(key[0])}-{esc(key[1])}">',
        f"<h4>{esc(key[1])} · {esc(first['kind'])} · {esc(first['bot_name'])}</h4>",
        f'<div class="context"><pre>{esc(first["prompt"])}</pre></div>',
    ]
    if first.get("reference"):
        lines.append(f'<p>held-out reply:</p><pre class="reference">{esc(first["reference"])}</pre>')
    if len(runs) == 1:
        header = "".join(f"<th>{esc(name)}</th>" for name in settings)
        body = "".join(sample_cell(cells.get((0, name), [])) for name in settings)
        lines.append(f'<table class="samples"><tr>{header}</tr><tr>{body}</tr></table>')
    else:
        header = "".join(f"<th>{esc(run.label)}</th>" for run in runs)
        rows = "".join(
            f"<tr><th>{esc(name)}</th>"
            + "".join(sample_cell(cells.get((index, name), [])) for index in range(len(runs)))
            + "</tr>"
            for name in settings
        )
        lines.append(
            f'<table class="samples"><tr><th class="setting">setting</th>{header}</tr>{rows}</table>'
        )
    return "\n".join(lines) + "</div>"


def samples_section(runs: list[Run]) -> str:
    settings = list(dict.fromkeys(row["setting"] for run in runs for row in run.samples))
    keys = list(dict.fromkeys((row["prompt_set"], row["prompt_id"]) for run in runs for row in run.samples))
    parts = []
    for prompt_set in dict.fromkeys(key[0] for key in keys):
        blocks = [prompt_block(runs, key, settings) for key in keys if key[0] == prompt_set]
        heading = f'<h3 id="set-{esc(prompt_set)}">{esc(prompt_set)}</h3>'
        parts.append(f'<section class="prompt-set">{heading}{"".join(blocks)}</section>')
    return "\n".join(parts)


def render_report(runs: list[Run], title: str, ratings: str = "") -> str:
    """The whole page for one run, or two runs compared (A first); `ratings`: the testers' judgements
    of the two (chatmill.rating's section), shown after the metric table."""
    legend = "".join(
        f'<span style="background:{COLOURS[index]}">{esc(run.label)}</span> '
        for index, run in enumerate(runs)
    )
    summary = "".join(
        f"<li>{esc(run.label)}: eval_loss {number(run.metrics.get('eval_loss'))}, perplexity "
        f"{number(run.metrics.get('perplexity'))}, {len(run.samples)} replies</li>"
        for run in runs
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="legend">{legend}</p>
<ul>{summary}</ul>
<h2 id="metrics">Metrics</h2>
<p>Hover a column name for its definition (docs/sample-eval.md has them all).</p>
{metric_table(runs)}
{ratings}
<h2 id="lengths">Reply length (words)</h2>
{histograms(runs)}
<h2 id="mannerisms">Phrases repeated across replies to different prompts</h2>
{mannerism_table(runs)}
<h2 id="samples">Samples</h2>
{samples_section(runs)}
</body></html>
"""
