"""Blind side-by-side rating of two runs in the browser: `make rate A=... B=... [PORT=7861]`.

A and B are what `make compare` takes: DVC experiments, git revisions (their sample-eval samples, read
from the DVC cache) or model folders (evaluated now with params.yaml's eval section). Every prompt of
sample-eval (held-out conversations, zero- and few-shot requests) that both runs replied to, with the
same sampling setting and sample number, is an item; pairs of identical replies are left out. A tester
sees the prompt and the two replies, labelled A (left) and B (right) in an order drawn per tester and
item, and picks "A is better", "B is better", "Tie" or "Both bad", with an optional note. The page
never names the runs: it knows items by an opaque id, and the server alone knows which run wrote which
reply. Each judgement is on disk (chatmill.rating) before the next item shows; a tester who comes back,
after a restart too, goes on with the items they have not rated, in their own order. Several testers
may rate at once, each under their name.

    python -m chatmill.ratepage A B [--host 127.0.0.1] [--port 7861]
"""

import argparse
import html
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.io import stable_hash, unit_interval
from chatmill.rating import CHOICES, RUNS, RatingLog, pair_name, ratings_file

PROMPT_SET_NAMES = {
    "heldout": "a held-out conversation",
    "zero_shot": "a request, on its own (zero-shot)",
    "few_shot": "a request, after worked examples (few-shot)",
}
TESTER = re.compile(r"[\w .-]{1,40}")  # a name that reads well in a file and a URL
NOTE_LIMIT = 2000
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 70em; padding: 1em 1.5em;
  color: #222; }
header { display: flex; justify-content: space-between; align-items: baseline;
  border-bottom: 1px solid #ddd; }
h1 { font-size: 1.3em; margin: .4em 0; } .muted { color: #666; }
.context { background: #f4f4f4; padding: .6em; max-height: 18em; overflow: auto; border-radius: 4px;
  display: flex; flex-direction: column-reverse; }  /* scrolled to the end: the turn replied to */
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: inherit; }
.replies { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin: 1em 0; }
.reply { border: 2px solid #d0d7e2; border-radius: 6px; padding: .6em .8em; }
.reply h2 { font-size: 1.1em; margin: 0 0 .4em; color: #3b6fb6; }
.empty { color: #999; font-style: italic; }
textarea { width: 100%; box-sizing: border-box; font: inherit; }
.choices { display: flex; gap: .6em; margin-top: .6em; }
.choices button { font: inherit; font-weight: 600; padding: .5em 1.2em; border-radius: 5px; cursor: pointer;
  border: 1px solid #8aa4c8; background: #eef3fa; }
.choices button.bad { border-color: #d9a0a0; background: #fbefef; }
.error { color: #b42318; }
"""


@dataclass(frozen=True)
class Item:
    """One prompt with one reply of each run (keyed A and B, as the runs are named on the command line)."""

    id: str  # opaque: names neither run
    prompt_set: str
    prompt_id: str
    setting: str
    sample: int
    prompt: str
    replies: dict[str, str]


def build_items(samples_a: list[dict[str, Any]], samples_b: list[dict[str, Any]]) -> tuple[list[Item], int]:
    """The items both runs have a reply for (same prompt, setting and sample number), and how many were
    left out because the two replies are the same text (nothing to judge)."""

    def key(row: dict[str, Any]) -> tuple[str, str, str, int]:
        return row["prompt_set"], row["prompt_id"], row["setting"], row["sample"]

    replies_b = {key(row): row["reply"] for row in samples_b}
    items, identical = [], 0
    for row in samples_a:
        if key(row) not in replies_b:
            continue
        if row["reply"] == replies_b[key(row)]:
            identical += 1
            continue
        items.append(
            Item(
                id=stable_hash(*key(row))[:16],
                prompt_set=row["prompt_set"],
                prompt_id=row["prompt_id"],
                setting=row["setting"],
                sample=row["sample"],
                prompt=row["prompt"],
                replies={"A": row["reply"], "B": replies_b[key(row)]},
            )
        )
    return items, identical


class Rating:
    """What the server knows: the items, who wrote each reply, and the judgements so far."""

    def __init__(self, a: str, b: str, items: list[Item]) -> None:
        self.a, self.b, self.pair = a, b, pair_name(a, b)
        self.items = {item.id: item for item in items}
        self.log = RatingLog(ratings_file(a, b), a, b)

    def left(self, tester: str, item: Item) -> str:
        """The run shown left (as "A") to this tester: a coin seeded by pair, tester and item, so that a
        page shown again, after a restart too, is the same page."""
        return RUNS[unit_interval("left", self.pair, tester, item.id) < 0.5]

    def next_item(self, tester: str) -> tuple[Item | None, int]:
        """The tester's next unrated item in their own order (seeded by pair and tester), and how many
        they have rated."""
        rated = self.log.rated_by(tester) & self.items.keys()
        unrated = [item for item in self.items.values() if item.id not in rated]
        first = min(
            unrated, key=lambda item: unit_interval("order", self.pair, tester, item.id), default=None
        )
        return first, len(rated)

    def record(self, tester: str, item: Item, choice: str, note: str) -> None:
        left = self.left(tester, item)
        self.log.append(
            {
                "item": item.id,
                "prompt_set": item.prompt_set,
                "prompt_id": item.prompt_id,
                "setting": item.setting,
                "sample": item.sample,
                "left": left,
                "choice": choice,
                "note": note,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "tester": tester,
                "a": self.a,
                "b": self.b,
                "reply_a": item.replies["A"],
                "reply_b": item.replies["B"],
            }
        )


# --- Pages ---------------------------------------------------------------------------------------------


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>\n'
        f"<body>{body}</body></html>\n"
    )


def name_page(total: int, error: str = "") -> str:
    problem = f'<p class="error">{esc(error)}</p>' if error else ""
    return page(
        "Blind rating",
        f"""<h1>Blind rating</h1>
<p>{total} items: a prompt and two replies, each written by one of two models, in random order. Pick the
better reply, or Tie, or Both bad; a note is welcome. You can stop at any time and come back: every
judgement is saved at once.</p>{problem}
<form method="get" action="/">
<label>Your name <input name="tester" id="tester" required maxlength="40" autofocus></label>
<button type="submit" id="start">Start rating</button></form>""",
    )


def reply_box(label: str, text: str) -> str:
    shown = f"<pre>{esc(text)}</pre>" if text.strip() else '<p class="empty">(empty reply)</p>'
    return f'<div class="reply" id="reply-{label.lower()}"><h2>{label}</h2>{shown}</div>'


def item_page(tester: str, item: Item, left: str, rated: int, total: int) -> str:
    right = RUNS[1 - RUNS.index(left)]
    buttons = "".join(
        f'<button type="submit" name="choice" value="{choice}" id="choice-{choice}" accesskey="{key}"'
        f"{' class=bad' if choice == 'both_bad' else ''}>{esc(label)}</button>"
        for (choice, label), key in zip(CHOICES.items(), "abtx", strict=True)
    )
    return page(
        "Blind rating",
        f"""<header><h1>Blind rating</h1><span class="muted">rating as <strong id="who">{esc(tester)}</strong>
· <span id="progress">{rated} of {total}</span> rated · <a href="/">not you?</a></span></header>
<p class="muted">The prompt: {esc(PROMPT_SET_NAMES.get(item.prompt_set, item.prompt_set))}. The model
writes the last line's reply.</p>
<div class="context"><pre id="prompt">{esc(item.prompt)}</pre></div>
<div class="replies">{reply_box("A", item.replies[left])}{reply_box("B", item.replies[right])}</div>
<form method="post" action="/rate">
<input type="hidden" name="tester" value="{esc(tester)}">
<input type="hidden" name="item" value="{esc(item.id)}">
<textarea name="note" id="note" rows="2" maxlength="{NOTE_LIMIT}"
 placeholder="Note (optional): why?"></textarea>
<div class="choices">{buttons}</div></form>""",
    )


def done_page(tester: str, total: int) -> str:
    return page(
        "Blind rating",
        f"""<h1>Thank you, {esc(tester)}</h1><p id="done">You have rated all {total} items. Your
judgements are saved; the team's numbers come from <code>make rate-report</code>.</p>""",
    )


def error_page(message: str) -> str:
    return page(
        "Blind rating", f'<h1>Blind rating</h1><p class="error">{esc(message)}</p><p><a href="/">Back</a></p>'
    )


# --- The server ----------------------------------------------------------------------------------------


def handler_for(rating: Rating) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def send(self, status: HTTPStatus, body: str = "", location: str = "") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")  # Back must not show a stale item as unrated
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            if url.path != "/":
                self.send(HTTPStatus.NOT_FOUND, error_page("No such page."))
                return
            tester = parse_qs(url.query).get("tester", [""])[0].strip()
            if not tester:
                self.send(HTTPStatus.OK, name_page(len(rating.items)))
            elif not TESTER.fullmatch(tester):
                error = "A name of up to 40 letters, digits, spaces, dots, dashes or underscores, please."
                self.send(HTTPStatus.OK, name_page(len(rating.items), error))
            else:
                item, rated = rating.next_item(tester)
                body = (
                    done_page(tester, len(rating.items))
                    if item is None
                    else item_page(tester, item, rating.left(tester, item), rated, len(rating.items))
                )
                self.send(HTTPStatus.OK, body)

        def do_POST(self) -> None:  # noqa: N802
            if urlsplit(self.path).path != "/rate":
                self.send(HTTPStatus.NOT_FOUND, error_page("No such page."))
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode("utf-8"), keep_blank_values=True)
            tester, item_id, choice, note = (
                form.get(key, [""])[0] for key in ("tester", "item", "choice", "note")
            )
            tester = tester.strip()
            item = rating.items.get(item_id)
            if not TESTER.fullmatch(tester) or item is None or choice not in CHOICES:
                self.send(
                    HTTPStatus.BAD_REQUEST,
                    error_page("That judgement was not understood; nothing was saved."),
                )
                return
            try:
                rating.record(tester, item, choice, note.strip()[:NOTE_LIMIT])
            except (ChatmillError, OSError) as error:
                print(f"rate: a judgement was not saved: {error}", file=sys.stderr)
                message = f"Your judgement was NOT saved ({error}); tell whoever runs this page."
                self.send(HTTPStatus.INTERNAL_SERVER_ERROR, error_page(message))
                return
            # Post/redirect/get: the next item is a plain page, and reloading it sends nothing twice.
            self.send(HTTPStatus.SEE_OTHER, location=f"/?tester={quote(tester)}")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
            """Quiet: one line per request would bury the start-up message."""

    return Handler


def load_rating(a: str, b: str) -> tuple[Rating, int]:
    """The two runs' samples as items (compare's way of reading a run), and the identical pairs left out."""
    from chatmill.compare import run_results  # only here: it brings in torch and transformers

    if a == b:
        raise ChatmillError(f"rate: A and B are both {a}; name two different runs")
    items, identical = build_items(run_results(a)[1], run_results(b)[1])
    if not items:
        raise ChatmillError(
            f"rate: {a} and {b} have no prompt, setting and sample in common with different replies "
            f"({identical} identical); were they evaluated with the same eval params?"
        )
    return Rating(a, b, items), identical


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs=2, metavar="RUN", help="model folders, git revisions or experiments")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (0.0.0.0: testers on the network)"
    )
    parser.add_argument("--port", type=int, default=7861, help="port to serve on (default 7861)")
    args = parser.parse_args()
    rating, identical = load_rating(*args.runs)
    server = ThreadingHTTPServer((args.host, args.port), handler_for(rating))
    server.daemon_threads = True
    print(
        f"rate: {len(rating.items)} items of {rating.a} (A) vs {rating.b} (B) ({identical} with identical "
        f"replies left out); judgements go to {rating.log.path} ({len(rating.log.judgements)} so far)\n"
        f"rate: testers open http://{args.host}:{server.server_port}/ (Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
