"""chatmill/plotpage.py: the page `dvc plots show` fills carries vega, vega-lite and vega-embed inside it.
`dvc plots show` on the pipeline's plots, the page opened in headless Chromium with the network off:
every chart is drawn; with DVC's own page (scripts from a CDN) none is, which shows the network is off."""

import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from test_report import dump_dom

from chatmill.pipeline import TRAIN_PLOTS, plots
from chatmill.plotpage import PACKAGES, PAGE, PAGE_DIR

PARTS = 2
# Chromium with every network request refused: file:// pages load, nothing else does.
OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--host-resolver-rules=MAP * ~NOTFOUND"]  # fmt: skip
# Appended to a copy of the page, run once the charts have been drawn: the libraries' own versions,
# and per chart canvas the pixels in colour (the data's lines and points; axes and text are grey).
MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const loaded = typeof vega === "undefined" ? null : [vega.version, vegaLite.version, vegaEmbed.version];
  const coloured = [...document.querySelectorAll("canvas.marks")].map(canvas => {
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      const [r, g, b, a] = pixels.slice(i, i + 4);
      if (a > 0 && (Math.abs(r - g) > 40 || Math.abs(g - b) > 40 || Math.abs(r - b) > 40)) count++;
    }
    return count;
  });
  document.body.dataset.measured = JSON.stringify({versions: loaded, coloured: coloured});
}, 2000));
</script>"""


def plots_project(folder: Path, offline_page: bool) -> Path:
    """A DVC project with the pipeline's plots and data for them: length-trim's curve and two parts'
    DVCLive logs. `offline_page`: with this repository's .dvc/config and page, or DVC's own."""
    folder.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=folder, check=True)
    if offline_page:
        shutil.copy(ROOT / ".dvc/config", folder / ".dvc/config")
        shutil.copytree(PAGE_DIR, folder / ".dvc/plots")
    (folder / "dvc.yaml").write_text(json.dumps({"plots": plots(PARTS)}))
    (folder / "reports").mkdir()
    rows = [f"{length},{max(0, 40 - length)},{max(0, 40 - length) // 2}" for length in range(0, 60, 5)]
    (folder / "reports/length-trim.csv").write_text("median_reply_length,before,after\n" + "\n".join(rows))
    for part in range(1, PARTS + 1):
        logs = folder / f"dvclive/part-{part:02d}/plots/metrics"
        for metric in [name for name, _ in TRAIN_PLOTS] + ["eval/loss"]:
            name = metric.split("/")[1]
            steps = range(10 * (part - 1) + 1, 10 * part + 1)
            (logs / metric).parent.mkdir(parents=True, exist_ok=True)
            (logs / f"{metric}.tsv").write_text(
                f"step\t{name}\n" + "".join(f"{step}\t{1 / step:.4f}\n" for step in steps)
            )
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show"], cwd=folder, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return folder / "dvc_plots/index.html"


def open_offline(page: Path, tmp_path: Path) -> dict:
    """What headless Chromium, with no network, drew of the page: {versions, coloured} (MEASURE)."""
    copy = page.with_name("measured.html")
    head, body_end, tail = page.read_text().rpartition("</body>")  # the libraries hold "</body>" too
    copy.write_text(head + MEASURE + body_end + tail)
    dom = dump_dom(copy, tmp_path, *OFFLINE, budget_ms=10000)
    measured = re.search(r'data-measured="([^"]*)"', dom)
    assert measured, f"the page did not finish loading in Chromium:\n{dom[-2000:]}"
    return json.loads(html.unescape(measured[1]))


def test_dvc_plots_show_draws_every_chart_offline(tmp_path: Path) -> None:
    page = plots_project(tmp_path / "project", offline_page=True)

    measured = open_offline(page, tmp_path)

    assert measured["versions"] == [package.version for package in PACKAGES]
    # One canvas per plot of the pipeline, each with its data drawn (hundreds of coloured pixels).
    assert len(measured["coloured"]) == len(plots(PARTS)) == 7
    assert min(measured["coloured"]) > 200, measured["coloured"]
    assert not re.search(r"<script[^>]*\ssrc=", page.read_text())  # nothing to fetch


def test_dvc_s_own_page_draws_nothing_offline(tmp_path: Path) -> None:
    """The failure the page fixes, and the proof that the browser above had no network."""
    page = plots_project(tmp_path / "project", offline_page=False)

    measured = open_offline(page, tmp_path)

    assert "cdn.jsdelivr.net" in page.read_text()
    assert measured == {"versions": None, "coloured": []}


def test_the_page_holds_the_pinned_packages_with_their_licences() -> None:
    text = PAGE.read_text()
    scripts = re.findall(
        r'<script data-package="([^"]+)" data-sha256="([0-9a-f]{64})">\n(.*?)\n</script>', text, re.S
    )
    assert [name for name, _, _ in scripts] == [f"{package.name}@{package.version}" for package in PACKAGES]
    for _, digest, code in scripts:  # each as `python -m chatmill.plotpage` wrote it
        assert hashlib.sha256(code.encode()).hexdigest() == digest
    # DVC fills {plot_divs}; there is no {scripts} for its CDN tags to go to.
    assert "{plot_divs}" in text and "{scripts}" not in text and "sourceMappingURL" not in text
    for package in PACKAGES:  # BSD-3-Clause, all three
        licence = (PAGE_DIR / f"LICENSE-{package.name}").read_text()
        assert "Redistribution and use in source and binary forms" in licence
    assert "html_template = plots/page.html" in (ROOT / ".dvc/config").read_text()
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "dvc_plots/index.html"], cwd=ROOT)
    assert ignored.returncode == 0  # `make release` counts no plots page as an uncommitted change
