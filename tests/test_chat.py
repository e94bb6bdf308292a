import copy
import os
import pty
import re
import select
import subprocess
import sys
import time
from itertools import pairwise

import pytest
import torch
from conftest import make_conversation
from transformers import LlamaConfig, LlamaForCausalLM

from chatmill import chat
from chatmill.errors import ChatmillError
from chatmill.generation import STOPS, Reply, generate_replies, generation_config, pad_id
from chatmill.prompt import encode_prompt, prepare_tokenizer, prompt_format

PYGMALION_TURN = ("\nYou:",)  # where a Pygmalion-format reply runs into the user's next turn
CARD = chat.Card(
    bot_name="Aria",
    persona="A cheerful guide.",
    scenario="The harbour.",
    greeting="Welcome!",
    examples=(("Where is the pier?", "Just ahead."),),
)


def new_chat() -> chat.Chat:
    return chat.Chat(CARD, chat.DEFAULT_SETTING, max_new_tokens=16)


def converse(session: chat.Chat, lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """Run the loop on scripted input; returns the lines it wrote and, per reply, the user turns it saw.
    Each reply arrives as a stream of two pieces, as the model writes it."""
    written, seen = [], []

    def reply(current: chat.Chat) -> chat.ReplyStream:
        seen.append([t["text"] for t in current.turns if t["role"] == "user"])
        stop = "max_tokens" if len(seen) == 3 else "eos"
        text = f"reply {len(seen)} at t={current.setting.temperature}"
        pieces = iter([text[:5], text[5:]])
        return chat.ReplyStream(pieces, lambda: Reply(text, 5, stop), PYGMALION_TURN)

    script = iter(lines)

    def read(prompt: str) -> str:
        assert prompt == "You: "
        try:
            return next(script)
        except StopIteration:
            raise EOFError from None

    chat.run(session, reply, read, written.append)
    return "".join(written).splitlines(), seen


def test_chat_loop_with_settings_regen_undo_and_persona():
    session = new_chat()
    written, seen = converse(
        session,
        [
            "Hello!",
            "/temp 0.5",
            "/regen",
            "/top_k -1",
            "/top_k x",
            "/undo",
            "",
            "Hi again",
            "/persona",
            "/wat",
        ],
    )
    assert written[0].startswith("chatting with Aria (temperature 0.7, top_p 0.9, top_k 40")
    assert written[1] == "Aria: Welcome!"
    assert written[2] == "Aria: reply 1 at t=0.7"
    assert written[3].startswith("temperature 0.5, top_p 0.9")
    assert written[4] == "Aria: reply 2 at t=0.5"  # /regen: the same user turn, answered again
    assert written[5] == "top_k=-1 must be >= 0; 0 = off"
    assert written[6] == "/top_k needs a number (int), e.g. /top_k 1"
    assert written[7] == "(took back your last message; 0 exchanges left)"
    assert written[8] == "Aria: reply 3 at t=0.5 [cut off: /max raises max_new_tokens]"
    assert written[9:11] == ["Aria's Persona: A cheerful guide.", "Scenario: The harbour."]
    assert written[-len(chat.HELP.splitlines()) :] == chat.HELP.splitlines()
    assert seen == [["Hello!"], ["Hello!"], ["Hi again"]]
    assert [t["role"] for t in session.turns] == ["user", "bot"]
    assert session.setting.top_k == 40 and session.setting.temperature == 0.5


def test_quit_reset_and_nothing_to_regenerate():
    session = new_chat()
    written, seen = converse(
        session, ["/regen", "Hello!", "/reset", "/max 0", "/max 8", "/quit", "never read"]
    )
    assert written[2] == "nothing to regenerate yet"
    assert written[3] == "Aria: reply 1 at t=0.7"
    assert written[4:6] == ["(started over)", "Aria: Welcome!"]
    assert written[6] == "/max must be >= 1" and written[7].endswith("max_new_tokens 8")
    assert len(written) == 8 and seen == [["Hello!"]] and session.turns == []


def test_a_chatml_model_chats_in_chatml(tiny_tokenizer):
    """The format comes with the model's tokenizer (base-model records it), not from params."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    prepare_tokenizer(tokenizer, "chatml", "Assistant")
    session = new_chat()
    session.turns = [{"role": "user", "name": "You", "text": "Hi."}]
    text = tokenizer.decode(chat.prompt_ids(tokenizer, session, context=256))
    assert text.startswith(
        "<|im_start|>system\nAria's Persona: A cheerful guide.\nScenario: The harbour.<|im_end|>\n"
    )
    assert text.endswith(
        "<|im_start|>assistant\nWelcome!<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_is_the_training_format(tiny_tokenizer):
    session = new_chat()
    session.turns = [{"role": "user", "name": "You", "text": "Hi."}]
    header, turns = chat.conversation(CARD, session.turns)
    assert [t["text"] for t in turns] == ["Where is the pier?", "Just ahead.", "Welcome!", "Hi."]
    ids = encode_prompt(tiny_tokenizer, header, turns)
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("Aria's Persona: A cheerful guide.\nScenario: The harbour.\n<START>\nYou: Where")
    assert text.endswith("Aria: Welcome!</s>\nYou: Hi.\nAria:")


def talking_model(tokenizer, context: int = 256) -> LlamaForCausalLM:
    """The tiny model after a second of training on one conversation: it writes words (with spaces,
    so transformers' streamer has pieces to hand out) instead of random bytes."""
    model = tiny_model(tokenizer, context)
    text = prompt_format(tokenizer).render_text(
        make_conversation("c", bot_replies=("Hello there, traveller.",))
    )
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return model.eval()


def tiny_model(tokenizer, context: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_a_long_chat_drops_the_oldest_turns_and_keeps_the_header(tiny_tokenizer):
    session = new_chat()  # max_new_tokens 16: in a context of 128 the prompt may have 112 tokens
    session.turns = [
        {"role": "user", "name": "You", "text": "Is the lighthouse far?"},
        {"role": "bot", "name": "Aria", "text": "A short walk along the pier."},
        {"role": "user", "name": "You", "text": "Can we go now?"},
    ]
    header, turns = chat.conversation(CARD, session.turns)
    limit = 128 - session.max_new_tokens
    assert limit == 112 and len(encode_prompt(tiny_tokenizer, header, turns)) > limit  # it must shrink

    ids = chat.prompt_ids(tiny_tokenizer, session, context=128)

    assert len(ids) <= limit
    # Exactly the oldest turns are gone, no more than needed: one more turn would not fit.
    first = next(
        (start for start in range(len(turns)) if ids == encode_prompt(tiny_tokenizer, header, turns[start:])),
        None,
    )
    assert first is not None, "the prompt is not the header and the newest turns, as in training"
    assert 0 < first < len(turns) - 1  # some turns dropped, more than the last one kept
    assert len(encode_prompt(tiny_tokenizer, header, turns[first - 1 :])) > limit
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("Aria's Persona: A cheerful guide.\nScenario: The harbour.\n<START>\n")
    assert "Where is the pier?" not in text  # the oldest turn, the card's example
    assert text.endswith("Aria: A short walk along the pier.</s>\nYou: Can we go now?\nAria:")


def test_a_last_turn_too_long_on_its_own_keeps_its_tail(tiny_tokenizer):
    session = new_chat()  # in a context of 64, the header alone does not fit in 64 - 16 tokens
    session.turns = [{"role": "user", "name": "You", "text": "Tell me a long story about the sea. " * 5}]
    header, turns = chat.conversation(CARD, session.turns)

    ids = chat.prompt_ids(tiny_tokenizer, session, context=64)

    assert len(ids) == 64 - session.max_new_tokens
    assert ids == encode_prompt(tiny_tokenizer, header, turns[-1:])[-len(ids) :]
    assert tiny_tokenizer.decode(ids).endswith("about the sea. \nAria:")


def test_a_streamed_reply_is_the_reply_sample_eval_would_sample(tiny_tokenizer):
    """Same prompt, same seed: the streamed reply is generate_replies' reply (the prompt format, the
    sampling settings and the stopping rules are shared), and it arrives in growing pieces."""
    model = talking_model(tiny_tokenizer)
    session = new_chat()
    session.max_new_tokens = 40
    session.turns = [{"role": "user", "name": "You", "text": "Hi."}]
    torch.manual_seed(3)
    stream = chat.stream_reply(model, tiny_tokenizer, session)
    shown = list(stream)
    torch.manual_seed(3)
    ids = chat.prompt_ids(tiny_tokenizer, session, context=256)
    config = generation_config(
        session.setting, 40, prompt_format(tiny_tokenizer).stops, pad_id(tiny_tokenizer)
    )
    expected = generate_replies(model, tiny_tokenizer, [ids], config, batch_size=1)[0]

    assert stream.reply == expected and stream.reply.stop in STOPS
    assert shown[-1] == expected.text
    assert len(set(shown)) >= 3, shown  # pieces, not one block at the end
    assert all(later.startswith(earlier) for earlier, later in pairwise(shown))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Hello there ", "Hello there"),
        ("Hello\nYo", "Hello"),  # perhaps the user's next turn: held back
        ("Hello\nYou: and more", "Hello"),  # the user's next turn: the reply ended before it
        ("Hello\nYes, and\n", "Hello\nYes, and"),
    ],
)
def test_shown_text_holds_back_what_may_be_the_next_turn(text, expected):
    assert chat.shown(text, PYGMALION_TURN) == expected


def test_the_terminal_writes_each_piece_once_and_stops_at_the_next_turn():
    written = []
    pieces = iter(["Sure", ", come", " along\nY", "ou: ok"])
    stream = chat.ReplyStream(pieces, lambda: Reply("Sure, come along", 6, "turn"), PYGMALION_TURN)
    assert chat.write_stream(stream, written.append).text == "Sure, come along"
    assert written == ["Sure", ", come", " along"]


def test_a_failed_generation_raises_in_the_reader_instead_of_hanging(tiny_tokenizer, monkeypatch):
    model = tiny_model(tiny_tokenizer, context=128)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "generate", broken)
    session = new_chat()
    session.turns = [{"role": "user", "name": "You", "text": "Hi."}]
    with pytest.raises(RuntimeError, match="out of memory"):
        list(chat.stream_reply(model, tiny_tokenizer, session))


def test_make_chat_streams_and_recalls_lines_with_readline(tiny_tokenizer, tmp_path):
    """`python -m chatmill.chat` in a terminal (a pty): a reply is printed, the up arrow brings the last
    line back (readline), and the history outlives the session."""
    folder = tmp_path / "model"
    tiny_model(tiny_tokenizer, context=128).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    screen = run_in_terminal(
        [sys.executable, "-m", "chatmill.chat", "--model", str(folder), "--max-new-tokens", "8"],
        ["Hello there\r", "\x1b[A\r", "/quit\r"],
        {"XDG_STATE_HOME": str(tmp_path / "state")},
    )
    assert screen.count("You: Hello there") == 2, screen  # typed, then recalled with the up arrow
    assert screen.count("Assistant: ") == 2, screen
    history = (tmp_path / "state" / "chatmill" / "chat_history").read_text().splitlines()
    assert history[-2:] == ["Hello there", "/quit"]  # readline keeps one of two equal lines in a row


def run_in_terminal(command: list[str], keys: list[str], env: dict[str, str], timeout: float = 60) -> str:
    """Run a command in a pseudo-terminal, typing each of `keys` once it asks for a line ("You: ");
    what the terminal showed, with carriage returns dropped."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        command, stdin=child, stdout=child, stderr=child, env={**os.environ, **env}, close_fds=True
    )
    os.close(child)
    screen, typed, deadline = "", 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    data = os.read(main, 4096)
                except OSError:  # the command ended and closed the terminal
                    break
                screen += data.decode("utf-8", "replace").replace("\r", "")
            if typed < len(keys) and screen.count("You: ") > typed:
                os.write(main, keys[typed].encode())
                typed += 1
            if process.poll() is not None and not ready:
                break
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, screen
    finally:
        process.kill()
        os.close(main)
    return screen


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("persona: no name", "must be a mapping with at least bot_name and persona"),
        ("bot_name: A\nmood: sunny", "unknown key(s) mood"),
        ("bot_name: A\npersona: [1]", "persona, scenario and greeting are text"),
        ("bot_name: A\nexamples: [{user: hi}]", "examples[0] must have user and bot text"),
    ],
)
def test_invalid_cards(tmp_path, text, message):
    path = tmp_path / "card.yaml"
    path.write_text(text)
    with pytest.raises(ChatmillError, match=re.escape(message)):
        chat.load_card(path)


def test_card_file(tmp_path):
    path = tmp_path / "card.yaml"
    path.write_text(
        "bot_name: Aria\npersona: A cheerful guide.\nscenario: The harbour.\ngreeting: Welcome!\n"
        "examples:\n  - user: Where is the pier?\n    bot: Just ahead.\n"
    )
    assert chat.load_card(path) == CARD
    with pytest.raises(ChatmillError, match="not found"):
        chat.load_card(tmp_path / "none.yaml")
