import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatmill import chat
from chatmill.errors import ChatmillError
from chatmill.generation import STOPS, Reply, generate_replies
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


def generate_and_record(monkeypatch, model, tokenizer, session: chat.Chat) -> tuple[Reply, list[int]]:
    """chat.generate's reply, and the prompt it really passed to generation."""
    prompts = []

    def recording(model, tokenizer, batch, *args, **kwargs):
        prompts.extend(batch)
        return generate_replies(model, tokenizer, batch, *args, **kwargs)

    monkeypatch.setattr(chat, "generate_replies", recording)
    reply = chat.generate(model, tokenizer, session)
    assert len(prompts) == 1
    assert reply.stop in STOPS and 1 <= reply.new_tokens <= session.max_new_tokens
    assert "\nYou:" not in reply.text
    return reply, prompts[0]


def test_a_long_chat_drops_the_oldest_turns_and_keeps_the_header(tiny_tokenizer, monkeypatch):
    model = tiny_model(tiny_tokenizer, context=128)
    session = new_chat()  # max_new_tokens 16: the prompt may have 128 - 16 tokens
    session.turns = [
        {"role": "user", "name": "You", "text": "Is the lighthouse far?"},
        {"role": "bot", "name": "Aria", "text": "A short walk along the pier."},
        {"role": "user", "name": "You", "text": "Can we go now?"},
    ]
    header, turns = chat.conversation(CARD, session.turns)
    limit = model.config.max_position_embeddings - session.max_new_tokens
    assert limit == 112 and len(encode_prompt(tiny_tokenizer, header, turns)) > limit  # it must shrink

    _, ids = generate_and_record(monkeypatch, model, tiny_tokenizer, session)

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


def test_a_last_turn_too_long_on_its_own_keeps_its_tail(tiny_tokenizer, monkeypatch):
    model = tiny_model(tiny_tokenizer, context=64)  # the header alone does not fit in 64 - 16 tokens
    session = new_chat()
    session.turns = [{"role": "user", "name": "You", "text": "Tell me a long story about the sea. " * 5}]
    header, turns = chat.conversation(CARD, session.turns)
    limit = model.config.max_position_embeddings - session.max_new_tokens

    _, ids = generate_and_record(monkeypatch, model, tiny_tokenizer, session)

    assert len(ids) == limit
    assert ids == encode_prompt(tiny_tokenizer, header, turns[-1:])[-limit:]
    assert tiny_tokenizer.decode(ids).endswith("about the sea. \nAria:")


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
