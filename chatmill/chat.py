"""Chat with a chatmill model in the terminal: `make chat [MODEL=models/part-03] [PERSONA=card.yaml]`
(default: the last trained part).

The prompt is the training format (persona header, <START>, "You:" and "{bot}:" turns); a reply ends
at the end-of-turn token or where the model starts your next "You:" line. Sampling settings change
while you chat (/temp, /top_p, /top_k, /rep, /max); /regen draws a new reply, /undo takes back the
last exchange. A persona card is a YAML (or JSON) file:

    bot_name: Aria
    persona: A cheerful tour guide in an old harbour town.
    scenario: You meet Aria at the pier.        # optional
    greeting: Welcome to the harbour!           # optional: the bot's first message
    examples:                                   # optional: example exchanges, before the greeting
      - user: Where is the lighthouse?
        bot: At the end of the pier. Shall I show you?
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.generation import (
    Reply,
    Setting,
    device,
    fit_prompt,
    generate_replies,
    generation_config,
    load_model,
    pad_id,
    setting_problem,
)
from chatmill.layout import model_dir, trained_parts
from chatmill.records import ASSISTANT_NAME, ASSISTANT_PERSONA
from chatmill.schema import USER_NAME, Conversation, Turn

# The logbook: temperature 0.5-0.7, top-p 0.9, top-k 40, and a repetition penalty above 1.0.
DEFAULT_SETTING = Setting(temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1)
SETTERS: dict[str, tuple[str, type]] = {
    "/temp": ("temperature", float),
    "/top_p": ("top_p", float),
    "/top_k": ("top_k", int),
    "/rep": ("repetition_penalty", float),
}
HELP = """commands:
  /temp X  /top_p X  /top_k N  /rep X  /max N   sampling (top_p 1 and top_k 0 = off; rep 1 = off)
  /regen     a new reply to your last message    /undo    take back your last message and its reply
  /settings  the sampling settings               /persona the persona card
  /reset     start the conversation over         /quit    leave (or Ctrl-D)"""


@dataclass(frozen=True)
class Card:
    bot_name: str
    persona: str
    scenario: str = ""
    greeting: str = ""
    examples: tuple[tuple[str, str], ...] = ()


DEFAULT_CARD = Card(ASSISTANT_NAME, ASSISTANT_PERSONA)


@dataclass
class Chat:
    card: Card
    setting: Setting
    max_new_tokens: int
    turns: list[Turn] = field(default_factory=list)  # what was said after the greeting


def load_card(path: Path) -> Card:
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ChatmillError(f"chat: persona card {path} not found") from None
    except yaml.YAMLError as error:
        raise ChatmillError(f"chat: {path} is not valid YAML: {error}".replace("\n", " ")) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("bot_name"), str) or not spec["bot_name"]:
        raise ChatmillError(f"chat: {path} must be a mapping with at least bot_name and persona")
    unknown = sorted(set(spec) - {"bot_name", "persona", "scenario", "greeting", "examples"})
    if unknown:
        raise ChatmillError(f"chat: {path} has unknown key(s) {', '.join(unknown)}")
    texts = {key: spec.get(key) or "" for key in ("persona", "scenario", "greeting")}
    examples = spec.get("examples") or []
    if not all(isinstance(value, str) for value in texts.values()) or not isinstance(examples, list):
        raise ChatmillError(f"chat: {path}: persona, scenario and greeting are text, examples a list")
    pairs = []
    for index, example in enumerate(examples):
        if not isinstance(example, dict) or not all(
            isinstance(example.get(key), str) for key in ("user", "bot")
        ):
            raise ChatmillError(f"chat: {path}: examples[{index}] must have user and bot text")
        pairs.append((example["user"], example["bot"]))
    return Card(spec["bot_name"], texts["persona"], texts["scenario"], texts["greeting"], tuple(pairs))


def conversation(card: Card, turns: list[Turn]) -> tuple[Conversation, list[Turn]]:
    """The card as a conversation header, and every turn before the next reply: the examples, the
    greeting, then the chat."""
    context: list[Turn] = []
    for user, bot in card.examples:
        context += [
            Turn(role="user", name=USER_NAME, text=user),
            Turn(role="bot", name=card.bot_name, text=bot),
        ]
    if card.greeting:
        context.append(Turn(role="bot", name=card.bot_name, text=card.greeting))
    header = Conversation(
        id="chat",
        source="chat",
        bot_name=card.bot_name,
        persona=card.persona,
        scenario=card.scenario,
        turns=[],
        meta="{}",
    )
    return header, context + turns


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, chat: Chat) -> Reply:
    """The bot's next reply; the oldest turns are dropped when the context is full."""
    header, turns = conversation(chat.card, chat.turns)
    ids = fit_prompt(tokenizer, header, turns, model.config.max_position_embeddings - chat.max_new_tokens)
    config = generation_config(chat.setting, chat.max_new_tokens, tokenizer.eos_token_id, pad_id(tokenizer))
    return generate_replies(model, tokenizer, [ids], config, batch_size=1)[0]


def describe(chat: Chat) -> str:
    s = chat.setting
    return (
        f"temperature {s.temperature}, top_p {s.top_p}, top_k {s.top_k}, repetition_penalty "
        f"{s.repetition_penalty}, max_new_tokens {chat.max_new_tokens}"
    )


def card_text(card: Card) -> str:
    lines = [f"{card.bot_name}'s Persona: {card.persona}", f"Scenario: {card.scenario}"]
    lines += [f"example: {USER_NAME}: {user} / {card.bot_name}: {bot}" for user, bot in card.examples]
    return "\n".join(lines + ([f"greeting: {card.greeting}"] if card.greeting else []))


def command(chat: Chat, line: str) -> str | None:
    """Apply a /command to the chat; the message to show, or None when a reply should be generated
    (/regen with a user turn to answer)."""
    word, _, argument = line.partition(" ")
    if word in SETTERS or word == "/max":
        name, kind = SETTERS.get(word, ("max_new_tokens", int))
        try:
            value: Any = kind(argument)
        except ValueError:
            return f"{word} needs a number ({kind.__name__}), e.g. {word} {kind(1)}"
        if name == "max_new_tokens":
            if value < 1:
                return "/max must be >= 1"
            chat.max_new_tokens = value
        else:
            setting = replace(chat.setting, **{name: value})
            problem = setting_problem(setting)
            if problem:
                return problem
            chat.setting = setting
        return describe(chat)
    if word in ("/regen", "/undo"):
        if chat.turns and chat.turns[-1]["role"] == "bot":
            chat.turns.pop()
        if word == "/regen":
            return None if chat.turns else "nothing to regenerate yet"
        if chat.turns:
            chat.turns.pop()
        return f"(took back your last message; {len(chat.turns) // 2} exchanges left)"
    if word == "/reset":
        chat.turns.clear()
        return "(started over)" + (
            f"\n{chat.card.bot_name}: {chat.card.greeting}" if chat.card.greeting else ""
        )
    replies = {"/settings": describe(chat), "/persona": card_text(chat.card)}
    return replies.get(word, HELP)


def run(
    chat: Chat, reply: Callable[[Chat], Reply], read: Callable[[str], str], write: Callable[[str], None]
) -> None:
    """The chat loop: a line is a message to the bot or a /command; Ctrl-D or /quit ends it."""
    write(f"chatting with {chat.card.bot_name} ({describe(chat)}); /help for commands")
    if chat.card.greeting:
        write(f"{chat.card.bot_name}: {chat.card.greeting}")
    while True:
        try:
            line = read(f"{USER_NAME}: ").strip()
        except EOFError:
            break
        if line == "/quit":
            break
        if line.startswith("/"):
            message = command(chat, line)
            if message is not None:
                write(message)
                continue
        elif line:
            chat.turns.append(Turn(role="user", name=USER_NAME, text=line))
        else:
            continue
        answer = reply(chat)
        chat.turns.append(Turn(role="bot", name=chat.card.bot_name, text=answer.text))
        cut = " [cut off: /max raises max_new_tokens]" if answer.stop == "max_tokens" else ""
        write(f"{chat.card.bot_name}: {answer.text}{cut}")


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a model folder (default: the last trained part)")
    parser.add_argument("--persona", type=Path, help="a persona card (default: an assistant)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="reply length limit (default 200)")
    args = parser.parse_args()
    trained = trained_parts()
    folder = args.model or (model_dir(trained[-1]) if trained else None)
    if folder is None or not (folder / "config.json").is_file():
        raise ChatmillError(
            f"chat: {folder or 'models/'} has no trained model; run `dvc repro` or pass MODEL="
        )
    card = load_card(args.persona) if args.persona else DEFAULT_CARD
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder, device())
    context = model.config.max_position_embeddings
    chat = Chat(card, DEFAULT_SETTING, min(args.max_new_tokens, context // 2))
    try:
        run(chat, lambda current: generate(model, tokenizer, current), input, print)
    except KeyboardInterrupt:
        print()


if __name__ == "__main__":
    main()
