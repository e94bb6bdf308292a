"""chatmill/rating.py and chatmill/ratepage.py (`make rate`, `make rate-report`): blind rating of two runs
in the browser, judgements that survive a killed server, several testers at once, and the win rate of B
over A with its Wilson interval, checked by hand."""

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, free_port, write_workspace
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from test_evaluation import make_tokenizer, save_model, stage_workdir
from test_report import PROMPTS, make_run

from chatmill import compare, ratepage, rating
from chatmill.errors import ChatmillError
from chatmill.io import read_json

A, B = "models/part-01", "models/part-02"
RUN_NAMES = (A, B, "part-01", "part-02", rating.file_part(A), rating.file_part(B))


# --- The number --------------------------------------------------------------------------------------


def test_wilson_interval_by_hand():
    """z = 1.959964, z² = 3.841459.
    8 of 10: p = 0.8, centre = (0.8 + 3.841459/20) / (1 + 3.841459/10) = 0.992073 / 1.384146 = 0.716740;
             half = 1.959964 / 1.384146 * sqrt(0.8*0.2/10 + 3.841459/400) = 1.416010 * 0.160011 = 0.226578;
             [0.490162, 0.943318] (the textbook's 0.490 to 0.943).
    0 of 5:  centre = (3.841459/10) / (1 + 3.841459/5) = 0.384146 / 1.768292 = 0.217241; half = 0.217241
             (sqrt(3.841459/100) = 0.195996, times 1.959964 / 1.768292 = 1.108394): [0, 0.434482]."""
    low, high = rating.wilson([8, 0, 3], [10, 5, 0])
    assert low[:2] == pytest.approx([0.490162, 0.0], abs=1e-6)
    assert high[:2] == pytest.approx([0.943318, 0.434482], abs=1e-6)
    assert low[2] != low[2] and high[2] != high[2]  # NaN: no judgement with a winner


def judgement(item: str, prompt_set: str, left: str, choice: str, tester: str = "ann") -> dict:
    return {
        "item": item,
        "prompt_set": prompt_set,
        "prompt_id": f"p-{item}",
        "setting": "t0.7-p0.9-k40-r1.1",
        "sample": 0,
        "left": left,
        "choice": choice,
        "note": "",
        "time": "2026-01-01T00:00:00+00:00",
        "tester": tester,
        "a": A,
        "b": B,
        "reply_a": "a reply",
        "reply_b": "b reply",
    }


# heldout: B wins 8 (5 shown left, 3 shown right), A wins 2, 1 tie, 1 both bad; zero_shot: A wins 3,
# B wins 1, 2 ties. A repeated judgement (ann, h1) counts once, as its later choice.
KNOWN = (
    [judgement("h1", "heldout", "A", "left")]  # A better, replaced below
    + [judgement(f"h{n}", "heldout", "B", "left") for n in range(1, 6)]  # B shown left, left chosen
    + [judgement(f"h{n}", "heldout", "A", "right", "bob") for n in range(6, 9)]  # B shown right
    + [judgement("h9", "heldout", "A", "left"), judgement("h10", "heldout", "B", "right")]  # A twice
    + [judgement("h11", "heldout", "A", "tie"), judgement("h12", "heldout", "B", "both_bad")]
    + [judgement(f"z{n}", "zero_shot", "B", "right") for n in range(3)]  # A shown right
    + [judgement("z3", "zero_shot", "A", "right"), judgement("z4", "zero_shot", "A", "tie")]
    + [judgement("z5", "zero_shot", "B", "tie", "bob")]
)


def test_report_on_known_judgements(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = rating.ratings_file(A, B)
    path.parent.mkdir()
    path.write_text("".join(json.dumps(line) + "\n" for line in KNOWN))
    monkeypatch.setattr(sys, "argv", ["python -m chatmill.rating", A, B])
    rating.main()
    out = capsys.readouterr().out

    lines = out.splitlines()
    assert (
        lines[0] == f"B = {B} over A = {A}: 18 judgements in ratings/models-part-01-vs-models-part-02.jsonl"
    )
    assert lines[1].split() == ["judgements", "testers", "A", "better", "B", "better", "tie", "both", "bad",
                                "B", "win", "rate", "95%", "low", "95%", "high"]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:6]}
    # B's wins over judgements with a winner: heldout 8 of 10 (the hand-checked interval), zero_shot 1 of 4,
    # overall 9 of 14.
    assert rows["heldout"] == ["12", "2", "2", "8", "1", "1", "0.800", "0.490", "0.943"]
    assert rows["zero_shot"] == ["6", "2", "3", "1", "2", "0", "0.250", "0.046", "0.699"]
    assert rows["overall"] == ["18", "2", "5", "9", "3", "1", "0.643", "0.388", "0.837"]

    metrics = read_json(Path("metrics/ratings.json"))
    assert list(metrics) == ["models-part-01-vs-models-part-02"]
    pair = metrics["models-part-01-vs-models-part-02"]
    assert pair["overall"]["judgements"] == 18 and pair["overall"]["b_win_rate"] == pytest.approx(9 / 14)
    assert pair["overall"]["tie_rate"] == pytest.approx(3 / 18, abs=1e-6)
    assert pair["overall"]["both_bad_rate"] == pytest.approx(1 / 18, abs=1e-6)
    assert pair["prompt_sets"]["heldout"] == {"judgements": 12, "b_win_rate": 0.8}
    assert set(pair["overall"]) == set(rating.OVERALL_METRICS)


def test_dvc_reads_the_ratings_metrics(tmp_path, monkeypatch):
    """dvc.yaml declares metrics/ratings.json, so `dvc metrics show` (and so `dvc exp show` and
    `dvc metrics diff`) reads the pair's numbers."""
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    write_workspace(tmp_path)  # params.yaml and the dvc.yaml it makes
    rating.RATINGS_DIR.mkdir()
    rating.ratings_file(A, B).write_text("".join(json.dumps(line) + "\n" for line in KNOWN))
    rating.write_metrics()
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"], capture_output=True, text=True, check=True
    ).stdout
    data = json.loads(shown)[""]["data"]["metrics/ratings.json"]["data"]
    assert data["models-part-01-vs-models-part-02"]["overall"]["b_win_rate"] == pytest.approx(
        9 / 14, abs=1e-6
    )


def test_compare_page_shows_the_ratings_of_the_pair(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = {A: make_run(A, PROMPTS), B: make_run(B, PROMPTS, tag="B ")}
    monkeypatch.setattr(compare, "run_results", lambda source: (runs[source].metrics, runs[source].samples))
    compare.compare([A, B])
    assert "Testers' judgements" not in Path("reports/compare.html").read_text()  # nobody rated them yet

    rating.RATINGS_DIR.mkdir()
    rating.ratings_file(A, B).write_text("".join(json.dumps(line) + "\n" for line in KNOWN))
    compare.compare([A, B])
    page = Path("reports/compare.html").read_text()
    section = page[page.index('<h2 id="ratings">') : page.index('<h2 id="lengths">')]
    assert "18 blind judgements by 2 tester(s)" in section
    assert f"win rate of B ({B}) over A ({A})" in section
    assert "<th>heldout</th>" in section and "<td>0.800</td>" in section and "<td>0.943</td>" in section


# --- Files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "part"),
    [
        ("models/part-03", "models-part-03"),
        ("HEAD~1", "HEAD-1"),
        ("../exp a", "exp-a"),
        ("no-trim", "no-trim"),
    ],
)
def test_run_names_become_file_names(source, part):
    assert rating.file_part(source) == part
    assert rating.ratings_file(source, "main") == Path(f"ratings/{part}-vs-main.jsonl")


def test_a_run_name_without_letters_is_a_one_line_error():
    with pytest.raises(ChatmillError, match="has nothing to name a ratings file by"):
        rating.file_part("/..")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "ratings/x.jsonl:2 is not JSON"),
        (json.dumps({"item": "i"}), "ratings/x.jsonl:2 is not a judgement: missing a, b, choice"),
        (
            json.dumps({**judgement("h2", "heldout", "A", "left"), "a": "main"}),
            "rates main vs models/part-02, not",
        ),
        (json.dumps(judgement("h2", "heldout", "C", "left")), "left 'C' is unknown"),
    ],
)
def test_a_bad_line_is_a_one_line_error_and_nothing_is_changed(tmp_path, line, message):
    path = tmp_path / "ratings" / "x.jsonl"
    path.parent.mkdir()
    text = json.dumps(judgement("h1", "heldout", "A", "left")) + "\n" + line + "\n"
    path.write_text(text)
    with pytest.raises(ChatmillError, match=message.replace("(", r"\(")):
        rating.RatingLog(path, A, B)
    assert path.read_text() == text


# --- The page, served in this process --------------------------------------------------------------


def fake_items(count: int) -> list[ratepage.Item]:
    return [
        ratepage.Item(
            f"item{n:02d}",
            "heldout",
            f"c{n}",
            "t0.7",
            0,
            f"You: question {n}?\nAria:",
            {"A": f"a{n}", "B": f"b{n}"},
        )
        for n in range(count)
    ]


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A rating server of 12 made-up items, in a thread: (the Rating, its URL)."""
    monkeypatch.chdir(tmp_path)
    state = ratepage.Rating(A, B, fake_items(12))
    server = ratepage.ThreadingHTTPServer(("127.0.0.1", 0), ratepage.handler_for(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def rate_item(url: str, tester: str, choice: str, note: str = "") -> str:
    """Ask for the tester's page, judge the item shown, and return the page that follows."""
    page = urllib.request.urlopen(f"{url}/?tester={urllib.parse.quote(tester)}").read().decode()
    item = page.split('name="item" value="')[1].split('"')[0]
    form = urllib.parse.urlencode({"tester": tester, "item": item, "choice": choice, "note": note}).encode()
    return urllib.request.urlopen(f"{url}/rate", data=form).read().decode()


def test_a_judgement_is_on_disk_before_the_next_item_shows(served, monkeypatch):
    state, url = served
    events = []
    real_fsync, real_next = rating.os.fsync, state.next_item

    def fsync(descriptor):
        real_fsync(descriptor)
        events.append(("fsync", len(state.log.path.read_text().splitlines())))

    def next_item(tester):
        events.append(
            ("page", len(state.log.path.read_text().splitlines()) if state.log.path.exists() else 0)
        )
        return real_next(tester)

    monkeypatch.setattr(rating.os, "fsync", fsync)
    monkeypatch.setattr(state, "next_item", next_item)
    page = rate_item(url, "ann", "left", note="A is kinder")
    assert "1 of 12" in page
    assert events[0] == ("page", 0)  # the first item
    # The line was written and flushed (the file, then its new name in the folder), then the next
    # item was shown.
    assert events[1:] == [("fsync", 1), ("fsync", 1), ("page", 1)]
    (line,) = state.log.path.read_text().splitlines()
    saved = json.loads(line)
    assert saved["tester"] == "ann" and saved["choice"] == "left" and saved["note"] == "A is kinder"
    assert saved["left"] == state.left("ann", state.items[saved["item"]])


def test_several_testers_at_once(served):
    state, url = served

    def rate_all(tester: str) -> None:
        for n in range(12):
            rate_item(url, tester, ("left", "right", "tie", "both_bad")[n % 4])

    threads = [threading.Thread(target=rate_all, args=(tester,)) for tester in ("ann", "bob", "Chloé D.")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [json.loads(line) for line in state.log.path.read_text().splitlines()]  # every line whole
    assert len(lines) == 36
    by_tester = {
        name: [line["item"] for line in lines if line["tester"] == name]
        for name in ("ann", "bob", "Chloé D.")
    }
    assert all(sorted(items) == sorted(state.items) for items in by_tester.values())  # each rated all, once
    assert len({tuple(items) for items in by_tester.values()}) == 3  # each tester in their own order
    done = urllib.request.urlopen(f"{url}/?tester=ann").read().decode()
    assert 'id="done"' in done and "all 12 items" in done


def test_a_judgement_sent_twice_is_kept_once(served):
    state, url = served
    page = urllib.request.urlopen(f"{url}/?tester=ann").read().decode()
    item = page.split('name="item" value="')[1].split('"')[0]
    form = urllib.parse.urlencode({"tester": "ann", "item": item, "choice": "tie"}).encode()
    for _ in range(2):  # a double click, or the browser sending the form again
        urllib.request.urlopen(f"{url}/rate", data=form)
    assert len(state.log.path.read_text().splitlines()) == 1


@pytest.mark.parametrize(
    "form",
    [
        {"tester": "ann", "item": "nope", "choice": "left"},
        {"tester": "ann", "item": "item00", "choice": "A"},
        {"tester": "<script>", "item": "item00", "choice": "left"},
    ],  # fmt: skip
    ids=["unknown item", "unknown choice", "bad name"],
)
def test_a_judgement_not_understood_saves_nothing(served, form):
    state, url = served
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{url}/rate", data=urllib.parse.urlencode(form).encode())
    assert error.value.code == 400 and "nothing was saved" in error.value.read().decode()
    assert not state.log.path.exists()


def test_two_servers_share_one_file(tmp_path, monkeypatch):
    """Two servers on one ratings file (two `make rate` of the same pair): their lines do not collide,
    and neither takes a judgement the other already holds."""
    monkeypatch.chdir(tmp_path)
    first, second = (ratepage.Rating(A, B, fake_items(4)) for _ in range(2))
    item = first.next_item("ann")[0]
    first.record("ann", item, "left", "")
    assert second.next_item("ann") == (first.next_item("ann")[0], 1)  # second read first's line
    second.record("ann", item, "right", "")  # the same item again: not written
    second.record("bob", item, "tie", "")
    assert [json.loads(line)["tester"] for line in first.log.path.read_text().splitlines()] == ["ann", "bob"]


def test_items_pair_the_runs_replies_and_leave_out_identical_ones():
    run_a, run_b = make_run(A, PROMPTS), make_run(B, PROMPTS[1:], tag="B ")
    same = dict(run_b.samples[0])
    run_a.samples.append({**same, "prompt_id": "shared", "reply": "Same."})
    run_b.samples.append({**same, "prompt_id": "shared", "reply": "Same."})
    items, identical = ratepage.build_items(run_a.samples, run_b.samples)
    assert identical == 1 and len(items) == len(run_b.samples) - 1  # B lacks a prompt that A has
    replies = {
        run.label: {
            (r["prompt_set"], r["prompt_id"], r["setting"], r["sample"]): r["reply"] for r in run.samples
        }
        for run in (run_a, run_b)
    }
    for item in items:
        key = (item.prompt_set, item.prompt_id, item.setting, item.sample)
        assert item.replies == {"A": replies[A][key], "B": replies[B][key]}
    assert len({item.id for item in items}) == len(items) and all(len(item.id) == 16 for item in items)


def test_make_rate_and_rate_report_run_the_modules():
    for target, module in (("rate", "chatmill.ratepage"), ("rate-report", "chatmill.rating")):
        output = subprocess.run(
            ["make", "-n", "-s", target, "A=main", "B=models/part-03"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert " ".join(output.splitlines()[-1].split()).endswith(f"python -m {module} main models/part-03")


# --- The page in a browser, with a killed server -----------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A sample-eval workspace (tests/test_evaluation.py's) with two tiny models, models/part-01 and
    models/part-02, that write different replies."""
    root = tmp_path_factory.mktemp("rate")
    tokenizer = make_tokenizer()
    first = save_model(tokenizer, root / "first", seed=0)
    stage_workdir(root / "work", first, tokenizer)
    for name, seed in (("part-01", 0), ("part-02", 1)):
        save_model(tokenizer, root / "work" / "models" / name, seed=seed)
    return root / "work"


def start_server(workspace: Path, port: int) -> subprocess.Popen:
    """`python -m chatmill.ratepage A B` in the workspace, once it serves."""
    server = subprocess.Popen(
        [sys.executable, "-m", "chatmill.ratepage", A, B, "--port", str(port)],
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return server
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"the rating server ended: {server.stdout.read()}")
            time.sleep(0.2)
    server.kill()
    pytest.fail("the rating server did not start within 120 s")


def rate_in_browser(browser, choices: list[str], seen: list[str]) -> None:
    """Click through `choices`, one item each, keeping every page's source and address in `seen`."""
    for index, choice in enumerate(choices):
        seen += [browser.page_source, browser.current_url]
        if index == 1:
            browser.find_element(By.ID, "note").send_keys("B rambles")
        button = browser.find_element(By.ID, f"choice-{choice}")
        button.click()
        WebDriverWait(browser, 30).until(expected_conditions.staleness_of(button))  # the next page
    seen += [browser.page_source, browser.current_url]


def test_rate_five_kill_the_server_restart_rate_five_more(workspace, browser):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    seen: list[str] = []
    server = start_server(workspace, port)
    try:
        browser.get(url)
        seen += [browser.page_source, urllib.request.urlopen(url).read().decode()]
        browser.find_element(By.ID, "tester").send_keys("ann")
        browser.find_element(By.ID, "start").click()
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "choice-left"))
        labels = [button.text for button in browser.find_elements(By.CSS_SELECTOR, ".choices button")]
        assert labels == ["A is better", "B is better", "Tie", "Both bad"]
        rate_in_browser(browser, ["left", "right", "tie", "both_bad", "right"], seen)
        before = (
            browser.find_element(By.ID, "prompt").text,
            browser.find_element(By.CLASS_NAME, "replies").text,
        )
        assert browser.find_element(By.ID, "progress").text == "5 of 28"
    finally:
        server.send_signal(signal.SIGKILL)  # no goodbye: what is not on disk now is lost
        server.wait()

    server = start_server(workspace, port)
    try:
        browser.get(f"{url}?tester=ann")
        # Where ann stopped: the same next item, nothing she rated shown again.
        assert browser.find_element(By.ID, "progress").text == "5 of 28"
        assert (
            browser.find_element(By.ID, "prompt").text,
            browser.find_element(By.CLASS_NAME, "replies").text,
        ) == before
        rate_in_browser(browser, ["left", "left", "right", "tie", "right"], seen)
        assert browser.find_element(By.ID, "progress").text == "10 of 28"
        raw = urllib.request.urlopen(f"{url}?tester=ann").read().decode()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()

    lines = [
        json.loads(line) for line in (workspace / "ratings/models-part-01-vs-models-part-02.jsonl").open()
    ]
    assert len(lines) == 10 and len({line["item"] for line in lines}) == 10
    assert [line["choice"] for line in lines] == ["left", "right", "tie", "both_bad", "right"] + [
        "left",
        "left",
        "right",
        "tie",
        "right",
    ]
    assert lines[1]["note"] == "B rambles" and {line["tester"] for line in lines} == {"ann"}
    assert {line["left"] for line in lines} == {"A", "B"}  # each run shown on either side
    assert all((line["a"], line["b"]) == (A, B) for line in lines)
    # Blind: no page, its HTML as served, or its address names either run.
    for text in [*seen, raw]:
        for name in RUN_NAMES:
            assert name not in text, name
