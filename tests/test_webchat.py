"""chatmill/webchat.py (`make chat-web`): the chat as a Gradio page, driven in headless Chromium: a
message, a reply streamed into the page, a regenerate with a changed slider, undo and reset. The model is
the terminal chat's tiny talking model (tests/test_chat.py), served in this process, so the test sees
what the page asked the model for."""

import subprocess
import sys
import time

import pytest
from conftest import ROOT, free_port
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from test_chat import CARD, talking_model

from chatmill import chat, webchat

# Watches the last reply in the conversation and keeps every text it shows: the streamed pieces.
WATCH = """
window.shownTexts = [];
const conversation = document.querySelector('#conversation');
new MutationObserver(() => {
  const bots = conversation.querySelectorAll('[data-testid="bot"]');
  const text = bots.length ? bots[bots.length - 1].innerText : '';
  if (window.shownTexts[window.shownTexts.length - 1] !== text) window.shownTexts.push(text);
}).observe(conversation, {subtree: true, childList: true, characterData: true});
"""


class SlowStreamer(chat.TextIteratorStreamer):
    """transformers' streamer, a little slow per token, so that the page has time to show each piece
    (the tiny model writes a whole reply in a few milliseconds)."""

    def put(self, value):
        time.sleep(0.03)
        super().put(value)


def normal(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def page(tiny_tokenizer, browser, monkeypatch):
    """The page of the talking model, opened in the browser; and every reply it asked for, as (turns,
    setting, stream)."""
    model = talking_model(tiny_tokenizer)
    asked = []

    def recording(model, tokenizer, current: chat.Chat) -> chat.ReplyStream:
        stream = chat.stream_reply(model, tokenizer, current)
        asked.append((list(current.turns), current.setting, stream))
        return stream

    monkeypatch.setattr(webchat, "stream_reply", recording)
    monkeypatch.setattr(chat, "TextIteratorStreamer", SlowStreamer)
    app = webchat.build_app(model, tiny_tokenizer, CARD, max_new_tokens=24)
    _, url, _ = app.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True
    )
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#message textarea"))
    yield browser, asked
    app.close()


def messages(browser, role: str) -> list[str]:
    """The conversation's messages of one side, read in one go (the page redraws them as it streams)."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)"
    return [normal(text) for text in browser.execute_script(script, f'#conversation [data-testid="{role}"]')]


def wait_for_reply(browser, asked: list, count: int) -> str:
    """The text of the `count`-th reply, once the page shows it finished."""
    WebDriverWait(browser, 60).until(lambda _: len(asked) >= count)
    reply = asked[count - 1][2].reply.text  # waits for the generation to end
    WebDriverWait(browser, 60).until(lambda b: messages(b, "bot")[-1:] == [normal(reply)])
    return reply


def test_a_chat_with_a_regenerate_undo_and_reset(page):
    browser, asked = page
    assert "A cheerful guide." in browser.find_element(By.ID, "persona").text
    assert "Where is the pier?" in browser.find_element(By.ID, "persona").text  # the card's example
    assert messages(browser, "bot") == ["Welcome!"] and messages(browser, "user") == []

    browser.execute_script(WATCH)
    box = browser.find_element(By.CSS_SELECTOR, "#message textarea")
    box.send_keys("Hello!", Keys.ENTER)
    first = wait_for_reply(browser, asked, 1)
    assert messages(browser, "user") == ["Hello!"] and messages(browser, "bot") == ["Welcome!", normal(first)]
    assert asked[0][0] == [{"role": "user", "name": "You", "text": "Hello!"}]
    assert asked[0][1] == chat.DEFAULT_SETTING
    # Streamed: the page showed the reply growing, piece by piece, before it showed all of it.
    shown = [normal(text) for text in browser.execute_script("return window.shownTexts")]
    growing = [text for text in shown if text and text != normal(first) and normal(first).startswith(text)]
    assert len(growing) >= 2, shown

    temperature = browser.find_element(By.CSS_SELECTOR, "#temperature input[type=number]")
    temperature.send_keys(Keys.CONTROL, "a")
    temperature.send_keys("0.5", Keys.TAB)
    browser.find_element(By.ID, "regenerate").click()
    second = wait_for_reply(browser, asked, 2)
    # A new reply to the same message, in its place: one message, one reply after the greeting.
    assert messages(browser, "user") == ["Hello!"] and messages(browser, "bot") == [
        "Welcome!",
        normal(second),
    ]
    assert asked[1][0] == asked[0][0] and asked[1][1].temperature == 0.5
    assert len(asked) == 2

    browser.find_element(By.ID, "undo").click()
    WebDriverWait(browser, 30).until(lambda b: messages(b, "user") == [])
    assert messages(browser, "bot") == ["Welcome!"]
    assert box.get_attribute("value") == "Hello!"  # back in the box, to edit and send again

    box.send_keys(Keys.ENTER)
    wait_for_reply(browser, asked, 3)
    assert asked[2][0] == asked[0][0]
    browser.find_element(By.ID, "reset").click()
    WebDriverWait(browser, 30).until(lambda b: messages(b, "user") == [])
    assert messages(browser, "bot") == ["Welcome!"]


def test_slider_ranges_cover_the_logbooks_settings():
    """Experiment 7's testers used temperature 0.5-1.0, top_p 0.9-1.0, top_k 0-40 and a repetition
    penalty of 1.0-1.2; every slider covers its range and starts at the terminal chat's setting."""
    used = {
        "temperature": (0.5, 1.0),
        "top_p": (0.9, 1.0),
        "top_k": (0, 40),
        "repetition_penalty": (1.0, 1.2),
    }
    for key, (low, high) in used.items():
        minimum, maximum, _, _ = webchat.SLIDERS[key]
        assert minimum <= low and high <= maximum, key
        assert minimum <= getattr(chat.DEFAULT_SETTING, key) <= maximum, key


def test_model_text_shows_as_written():
    """A model that writes a tag shows it (escaped), and the card's greeting opens the conversation."""
    card = chat.Card("Aria", "A guide.", greeting="<b>Hi</b>")
    shown = webchat.messages(card, [{"role": "user", "name": "You", "text": "x < y"}])
    assert shown == [
        {"role": "assistant", "content": "&lt;b&gt;Hi&lt;/b&gt;"},
        {"role": "user", "content": "x &lt; y"},
    ]


def test_make_chat_web_runs_the_module():
    output = subprocess.run(
        ["make", "-n", "-s", "chat-web", "MODEL=models/part-03", "PERSONA=card.yaml", "PORT=7999"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = normal(output.splitlines()[-1])
    assert command.endswith(
        "python -m chatmill.webchat --model models/part-03 --persona card.yaml --port 7999"
    )


def test_no_trained_model_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["python -m chatmill.webchat"])
    with pytest.raises(SystemExit) as exit_info:
        webchat.main()
    assert exit_info.value.code == 1
    assert (
        capsys.readouterr().err
        == "error: chat: models/ has no trained model; run `dvc repro` or pass MODEL=\n"
    )
