"""reports/sample-eval.html: self-contained, model text escaped, and it renders: a headless Chromium
opens it and measures the metric table and the samples side by side.

The browser test is the report's only real-browser proof, so without Chromium it fails (install
Debian's chromium; .ci/run does). A developer without one may skip it on purpose with
CHATMILL_SKIP_BROWSER=1."""

import html
import json
import os
import re
import shutil
import subprocess

import pytest

from chatmill import metrics
from chatmill.evaluation import report_run
from chatmill.report import Run, render_report

SETTINGS = ["t0.5-p0.9-k0-r1.1", "t0.7-p1.0-k40-r1.2"]
CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
SKIP_BROWSER = os.environ.get("CHATMILL_SKIP_BROWSER", "") not in ("", "0")
# Appended to a copy of the page (the report itself has no script): what the browser laid out.
MEASURE = """<script>
const box = e => e.getBoundingClientRect();
const shown = e => box(e).width > 0 && box(e).height > 0;
const table = document.querySelector("table.metrics");
const samples = [...document.querySelectorAll(".sample")];
const cells = [...document.querySelector("table.samples").rows[1].cells];
document.body.dataset.layout = JSON.stringify({
  metricRows: [...table.rows].filter(shown).length,
  metricCells: [...table.rows[2].cells].map(c => c.innerText),  // under the first section heading
  samples: samples.filter(shown).length,
  replies: samples.map(s => s.querySelector(".reply").innerText),
  tops: cells.map(c => Math.round(box(c).top)),
  lefts: cells.map(c => Math.round(box(c).left)),
  rights: cells.map(c => Math.round(box(c).right)),
  bars: [...document.querySelectorAll("svg rect")].filter(shown).length,
  width: document.documentElement.clientWidth,
});
</script>"""


def sample(prompt_set: str, prompt_id: str, setting: str, index: int, reply: str) -> dict:
    return {
        "setting": setting,
        "prompt_set": prompt_set,
        "prompt_id": prompt_id,
        "kind": "conversation" if prompt_set == "heldout" else "recipe",
        "sample": index,
        "bot_name": "Aria",
        "prompt": f"Aria's Persona: A guide.\nScenario: \n<START>\nYou: Question {prompt_id}?\nAria:",
        "reference": "The real reply." if prompt_set == "heldout" else None,
        "reply": reply,
        "words": len(metrics.words(reply)),
        "new_tokens": 12,
        "stop": "eos" if index else "max_tokens",
        "short": metrics.is_short(reply, 5),
        "rep_4": metrics.rep_n(reply),
        "repetitive": False,
        "keyword_recall": 0.5 if prompt_set != "heldout" else None,
        "acceptable": index == 1 and not metrics.is_short(reply, 5),
    }


def make_run(label: str, prompts: list[tuple[str, str]], tag: str = "") -> Run:
    rows = [
        sample(
            prompt_set,
            prompt_id,
            setting,
            index,
            f"{tag}Reply {index} to {prompt_id} at {setting}, said warmly.",
        )
        for prompt_set, prompt_id in prompts
        for setting in SETTINGS
        for index in range(2)
    ]
    rows[0]["reply"] = "<script>alert(1)</script> & </td></table> Yes."
    values = {"eval_loss": 1.25, "perplexity": 3.49, **metrics.sample_metrics(rows)}
    return report_run(label, values, rows)


PROMPTS = [("heldout", "c1"), ("heldout", "c2"), ("zero_shot", "recipe"), ("few_shot", "recipe")]
ONE = [make_run("models/part-10", PROMPTS)]
TWO = [ONE[0], make_run("models/part-03", PROMPTS[1:], tag="B ")]  # B lacks one held-out prompt


@pytest.mark.parametrize("runs", [ONE, TWO], ids=["one run", "two runs"])
def test_report_is_self_contained(runs):
    page = render_report(runs, "sample-eval")
    for outside in ("<script", "<link", "src=", "href=", "url(", "@import", "http:", "https:"):
        assert outside not in page


def test_model_text_is_escaped():
    page = render_report(ONE, "sample-eval")
    assert "<script>alert" not in page
    assert html.escape("<script>alert(1)</script> & </td></table> Yes.") in page


def test_metric_columns_and_their_hover_text_come_from_the_registry():
    page = render_report(ONE, "sample-eval")
    header = page.split('<table class="metrics">')[1].split("</tr>")[0]
    titles = re.findall(r'<th title="([^"]*)">([^<]*(?:<wbr>[^<]*)*)</th>', header)
    assert [(html.unescape(title), name.replace("<wbr>", "")) for title, name in titles] == [
        (metric.help, metric.name) for metric in metrics.METRICS
    ]
    assert "Hover a column name for its definition (docs/sample-eval.md has them all)." in page


def expected_table(runs: list[Run]) -> dict[str, int]:
    """What the metric table must hold, counted from the runs' samples, not from the page: a section
    for all replies and per setting, one per prompt set and one per setting within each set; a group
    (row label) for all replies, each setting, each prompt set and each setting within each set;
    per group one row per run, and with two runs a change row."""
    rows = [row for run in runs for row in run.samples]
    settings = {row["setting"] for row in rows}
    prompt_sets = {row["prompt_set"] for row in rows}
    set_settings = {(row["prompt_set"], row["setting"]) for row in rows}
    groups = 1 + len(settings) + len(prompt_sets) + len(set_settings)
    sections = 2 + len(prompt_sets)
    per_group = len(runs) + (len(runs) == 2)
    return {"groups": groups, "sections": sections, "rows": 1 + sections + groups * per_group}


def test_comparison_shows_changes_and_gaps():
    page = render_report(TWO, "sample-eval: A vs B")
    expected = expected_table(TWO)
    assert expected == {"groups": 12, "sections": 5, "rows": 42}  # 3 settings-groups, 3 sets, 3 x 2
    assert page.count('class="delta"') == expected["groups"]
    assert len(re.findall(r"<tr><td class=\"group\">", page)) == 2 * expected["groups"]
    assert page.count('<tr class="section">') == expected["sections"]
    table = page.split('<table class="metrics">')[1].split("</table>")[0]
    assert table.count("<tr") == expected["rows"]
    # A cell per (prompt, setting, run) with no sample: B has none for c1, in either setting.
    keys = {(row["prompt_set"], row["prompt_id"], row["setting"]) for run in TWO for row in run.samples}
    missing = sum(
        not any((row["prompt_set"], row["prompt_id"], row["setting"]) == key for row in run.samples)
        for key in keys
        for run in TWO
    )
    assert missing == len(SETTINGS)
    assert page.count('class="missing"') == missing
    assert page.count('class="sample"') == sum(len(run.samples) for run in TWO) == (4 + 3) * len(SETTINGS) * 2
    # The change row of all replies: B - A of each metric, from the two runs' metrics.
    a, b = (run.metrics["overall"] for run in TWO)
    change = re.search(r'<tr class="delta"><td class="group">all replies</td><td>change</td>(.*?)</tr>', page)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", change[1])
    assert len(cells) == len(metrics.METRICS)
    for metric, cell in zip(metrics.METRICS, cells, strict=True):
        if metric.name == "n_replies" or metric.name not in a or metric.name not in b:
            assert cell == "", metric.name
        else:
            assert float(cell) == pytest.approx(b[metric.name] - a[metric.name], abs=1e-3), metric.name


def chromium() -> str:
    """The browser, or a failure that says how to get one: without it the report has no real-browser
    proof. CHATMILL_SKIP_BROWSER=1 skips instead, for a developer who cannot install one."""
    if CHROMIUM:
        return CHROMIUM
    if SKIP_BROWSER:
        pytest.skip(
            "CHATMILL_SKIP_BROWSER is set and Chromium is not installed: the report's only real-browser "
            "check did not run"
        )
    pytest.fail(
        "Chromium is not installed, and the report's browser check needs it: install Debian's chromium "
        "(apt-get install chromium; .ci/run does), or set CHATMILL_SKIP_BROWSER=1 to skip it on purpose",
        pytrace=False,
    )


def dump_dom(path, tmp_path, *flags: str, budget_ms: int = 5000) -> str:
    """The DOM of the page at `path` once headless Chromium has run it for `budget_ms` of virtual time."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", *flags,
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
        f"--virtual-time-budget={budget_ms}", "--dump-dom", path.as_uri(),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def open_in_chromium(page: str, tmp_path) -> dict:
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", MEASURE + "</body>"))
    dom = dump_dom(path, tmp_path)
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, f"Chromium did not lay out the page:\n{dom[:2000]}"
    return json.loads(html.unescape(found[1]))


@pytest.mark.parametrize("runs", [ONE, TWO], ids=["one run", "two runs"])
def test_report_renders_in_headless_chromium(runs, tmp_path):
    page = render_report(runs, "sample-eval")
    layout = open_in_chromium(page, tmp_path)
    assert layout["metricRows"] == expected_table(runs)["rows"]
    first = runs[0].metrics["overall"]
    assert layout["metricCells"][0] == "all replies"
    assert str(first["n_replies"]) == layout["metricCells"][-1] and layout["metricCells"].count("–") == 0
    replies = [row["reply"] for run in runs for row in run.samples]
    assert layout["samples"] == len(replies) and sorted(layout["replies"]) == sorted(replies)
    assert layout["bars"] > 0
    # Side by side: one row of cells (settings, or A | B), left to right, all within the window.
    assert len(set(layout["tops"])) == 1
    assert layout["lefts"] == sorted(layout["lefts"]) and len(set(layout["lefts"])) == len(layout["lefts"])
    assert max(layout["rights"]) <= layout["width"]
