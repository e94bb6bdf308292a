"""reports/sample-eval.html: self-contained, model text escaped, and it renders: a headless Chromium
opens it and measures the metric table and the samples side by side."""

import html
import json
import re
import shutil
import subprocess

import pytest
import sample_eval

from chatmill.report import Run, render_report

SETTINGS = ["t0.5-p0.9-k0-r1.1", "t0.7-p1.0-k40-r1.2"]
CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
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
        "words": len(sample_eval.words(reply)),
        "new_tokens": 12,
        "stop": "eos" if index else "max_tokens",
        "short": sample_eval.is_short(reply, 5),
        "rep_4": sample_eval.rep_n(reply),
        "repetitive": False,
        "keyword_recall": 0.5 if prompt_set != "heldout" else None,
        "acceptable": index == 1 and not sample_eval.is_short(reply, 5),
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
    metrics = {"eval_loss": 1.25, "perplexity": 3.49, **sample_eval.sample_metrics(rows)}
    return sample_eval.run(label, metrics, rows)


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


def test_comparison_shows_changes_and_gaps():
    page = render_report(TWO, "sample-eval: A vs B")
    assert page.count('class="delta"') == len(re.findall(r"<tr><td class=\"group\">", page)) // 2
    assert page.count('class="missing"') == len(SETTINGS)  # c1 has no B samples
    assert page.count('class="sample"') == (4 + 3) * len(SETTINGS) * 2


def open_in_chromium(page: str, tmp_path) -> dict:
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", MEASURE + "</body>"))
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", "--virtual-time-budget=5000",
        "--dump-dom", path.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, f"Chromium did not lay out the page:\n{dom[:2000]}"
    return json.loads(html.unescape(found[1]))


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)"
)
@pytest.mark.parametrize("runs", [ONE, TWO], ids=["one run", "two runs"])
def test_report_renders_in_headless_chromium(runs, tmp_path):
    page = render_report(runs, "sample-eval")
    layout = open_in_chromium(page, tmp_path)
    assert layout["metricRows"] == page.split('<table class="metrics">')[1].split("</table>")[0].count("<tr")
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
