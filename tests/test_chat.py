import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatmill import chat
from chatmill.errors import ChatmillError
from chatmill.generation import STOPS, Reply
from chatmill.prompt import encode_prompt

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
    """Run the loop on scripted input; returns what it wrote and, per reply, the user turns it saw."""
    written, seen = [], []

    def reply(current: chat.Chat) -> Reply:
        seen.append([t["text"] for t in current.turns if t["role"] == "user"])
        stop = "max_tokens" if len(seen) == 3 else "eos"
        return Reply(f"reply {len(seen)} at t={current.setting.temperature}", 5, stop)

    script = iter(lines)

    def read(prompt: str) -> str:
        assert prompt == "You: "
        try:
            return next(script)
        except StopIteration:
            raise EOFError from None

    chat.run(session, reply, read, written.append)
    return written, seen


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
    assert written[9].startswith("Aria's Persona: A cheerful guide.\nScenario: The harbour.")
    assert written[10] == chat.HELP
    assert seen == [["Hello!"], ["Hello!"], ["Hi again"]]
    assert [t["role"] for t in session.turns] == ["user", "bot"]
    assert session.setting.top_k == 40 and session.setting.temperature == 0.5


def test_quit_reset_and_nothing_to_regenerate():
    session = new_chat()
    written, seen = converse(
        session, ["/regen", "Hello!", "/reset", "/max 0", "/max 8", "/quit", "never read"]
    )
    assert written[2] == "nothing to regenerate yet"
    assert written[4] == "(started over)\nAria: Welcome!"
    assert written[5] == "/max must be >= 1" and written[6].endswith("max_new_tokens 8")
    assert len(written) == 7 and seen == [["Hello!"]] and session.turns == []


def test_prompt_is_the_training_format(tiny_tokenizer):
    session = new_chat()
    session.turns = [{"role": "user", "name": "You", "text": "Hi."}]
    header, turns = chat.conversation(CARD, session.turns)
    assert [t["text"] for t in turns] == ["Where is the pier?", "Just ahead.", "Welcome!", "Hi."]
    ids = encode_prompt(tiny_tokenizer, header, turns)
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("Aria's Persona: A cheerful guide.\nScenario: The harbour.\n<START>\nYou: Where")
    assert text.endswith("Aria: Welcome!</s>\nYou: Hi.\nAria:")


def test_generate_with_a_tiny_model(tiny_tokenizer):
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    session = new_chat()
    session.turns = [{"role": "user", "name": "You", "text": "Tell me a long story about the sea. " * 5}]
    reply = chat.generate(model, tiny_tokenizer, session)  # the context is full: the oldest turns go
    assert reply.stop in STOPS and 1 <= reply.new_tokens <= 16
    assert "\nYou:" not in reply.text


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
