"""Chat with a chatmill model in the terminal: `make chat [MODEL=models/part-03] [PERSONA=card.yaml]`
(default: the last trained part).

The prompt is the model's training format (prompt.format, recorded with its tokenizer: Pygmalion's
persona header, <START>, "You:" and "{bot}:" turns, or ChatML's, or the base model's chat template);
a reply ends at the end-of-turn token or where the model starts your next turn ("You:",
<|im_start|>), and is printed as it is generated. Sampling settings change while you chat (/temp,
/top_p, /top_k, /rep, /max); /regen draws a new reply, /undo takes back the last exchange. Lines are
edited and recalled (arrow keys) with readline; the history is kept in
$XDG_STATE_HOME/chatmill/chat_history. The web page (chatmill.webchat) is built from the same
pieces. A persona card is a YAML (or JSON) file:

    bot_name: Aria
    persona: A cheerful tour guide in an old harbour town.
    scenario: You meet Aria at the pier.        # optional
    greeting: Welcome to the harbour!           # optional: the bot's first message
    examples:                                   # optional: example exchanges, before the greeting
      - user: Where is the lighthouse?
        bot: At the end of the pier. Shall I show you?
"""

import argparse
import atexit
import os
import readline
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TextIteratorStreamer

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.generation import (
    Reply,
    Setting,
    device,
    finish,
    fit_prompt,
    generation_config,
    left_pad,
    load_model,
    pad_id,
    setting_problem,
)
from chatmill.layout import is_model_folder, model_dir, trained_parts
from chatmill.prompt import prompt_format
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


def prompt_ids(tokenizer: PreTrainedTokenizerBase, chat: Chat, context: int) -> list[int]:
    """The prompt for the bot's next reply, encoded as in training; the oldest turns are dropped when it
    would leave less than max_new_tokens of the model's `context` for the reply."""
    header, turns = conversation(chat.card, chat.turns)
    return fit_prompt(tokenizer, header, turns, context - chat.max_new_tokens)


def shown(text: str, turn_strings: tuple[str, ...]) -> str:
    """The part of a reply being generated that is sure to stay: up to the user's next turn (the
    format's turn_strings), without a tail that may turn out to be its start (a newline, "Yo")."""
    for turn in turn_strings:
        text = text.split(turn, 1)[0]
        for size in range(len(turn) - 1, 0, -1):
            if text.endswith(turn[:size]):
                text = text[:-size]
                break
    return text.strip()


@dataclass
class ReplyStream:
    """A reply while it is generated: iterating gives the text so far (`shown`), growing as the model
    writes, and last the finished reply's text; `reply` is the finished reply (it waits for the end)."""

    pieces: Iterator[str]  # decoded text as the model writes it
    result: Callable[[], Reply]
    turn_strings: tuple[str, ...]  # the text where the user's next turn starts (Stops.turn_strings)

    def __iter__(self) -> Iterator[str]:
        text = ""
        for piece in self.pieces:
            text += piece
            yield shown(text, self.turn_strings)
        yield self.reply.text

    @cached_property
    def reply(self) -> Reply:
        return self.result()


def stream_reply(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, chat: Chat) -> ReplyStream:
    """The bot's next reply, generated in a thread and streamed through transformers' streamer; it ends
    as sample-eval's replies do (chatmill.generation: end-of-turn token, the next turn, length)."""
    ids = prompt_ids(tokenizer, chat, model.config.max_position_embeddings)
    stops = prompt_format(tokenizer).stops
    config = generation_config(chat.setting, chat.max_new_tokens, stops, pad_id(tokenizer))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    outcome: dict[str, Any] = {}

    @torch.inference_mode()
    def generate() -> None:
        try:
            input_ids, mask = left_pad([ids], config.pad_token_id)
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=mask.to(model.device),
                generation_config=config,
                tokenizer=tokenizer,
                streamer=streamer,
            )
            new = output[0, len(ids) :].tolist()
            outcome["reply"] = finish(tokenizer, new, stops, config.pad_token_id)
        except BaseException as error:  # re-raised in the caller's thread, by result()
            outcome["error"] = error
            streamer.end()  # the reader would otherwise wait forever

    thread = threading.Thread(target=generate, name="chat-reply", daemon=True)
    thread.start()

    def result() -> Reply:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["reply"]

    return ReplyStream(streamer, result, stops.turn_strings)


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


def drop_reply(turns: list[Turn]) -> bool:
    """Take back the bot's last reply, to draw a new one; True when there is a message to answer."""
    if turns and turns[-1]["role"] == "bot":
        turns.pop()
    return bool(turns)


def undo(turns: list[Turn]) -> list[Turn]:
    """Take back the last exchange, the bot's reply and the message it answered; returns them."""
    taken = turns[-1:] if turns and turns[-1]["role"] == "bot" else []
    if drop_reply(turns):
        taken.insert(0, turns.pop())
    return taken


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
    if word == "/regen":
        return None if drop_reply(chat.turns) else "nothing to regenerate yet"
    if word == "/undo":
        undo(chat.turns)
        return f"(took back your last message; {len(chat.turns) // 2} exchanges left)"
    if word == "/reset":
        chat.turns.clear()
        return "(started over)" + (
            f"\n{chat.card.bot_name}: {chat.card.greeting}" if chat.card.greeting else ""
        )
    replies = {"/settings": describe(chat), "/persona": card_text(chat.card)}
    return replies.get(word, HELP)


def write_stream(stream: ReplyStream, write: Callable[[str], None]) -> Reply:
    """Write a reply as it grows (each piece once), and return it finished."""
    written = ""
    for text in stream:
        if len(text) > len(written) and text.startswith(written):  # `shown` only grows: a guard
            write(text[len(written) :])
            written = text
    return stream.reply


def run(
    chat: Chat,
    reply: Callable[[Chat], ReplyStream],
    read: Callable[[str], str],
    write: Callable[[str], None],
) -> None:
    """The chat loop: a line is a message to the bot or a /command; Ctrl-D or /quit ends it. `write`
    writes text as given (no newline added), so that a reply appears while it is generated."""
    write(f"chatting with {chat.card.bot_name} ({describe(chat)}); /help for commands\n")
    if chat.card.greeting:
        write(f"{chat.card.bot_name}: {chat.card.greeting}\n")
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
                write(message + "\n")
                continue
        elif line:
            chat.turns.append(Turn(role="user", name=USER_NAME, text=line))
        else:
            continue
        write(f"{chat.card.bot_name}: ")
        answer = write_stream(reply(chat), write)
        chat.turns.append(Turn(role="bot", name=chat.card.bot_name, text=answer.text))
        write(" [cut off: /max raises max_new_tokens]\n" if answer.stop == "max_tokens" else "\n")


def history_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "chatmill" / "chat_history"


def keep_history(path: Path) -> None:
    """Line editing and the arrow keys' history for input(), from and back to `path`."""
    try:
        readline.read_history_file(path)
    except FileNotFoundError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)

    atexit.register(save)


def load_chat_model(
    model: Path | None, persona: Path | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Card]:
    """The model folder (default: the last trained part), its tokenizer and the persona card (default:
    an assistant), for the terminal and the web chat."""
    trained = trained_parts()
    folder = model or (model_dir(trained[-1]) if trained else None)
    if folder is None or not is_model_folder(folder):
        raise ChatmillError(
            f"chat: {folder or 'models/'} has no trained model; run `dvc repro` or pass MODEL="
        )
    card = load_card(persona) if persona else DEFAULT_CARD
    return load_model(folder, device()), AutoTokenizer.from_pretrained(folder), card


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def chat_arguments(description: str) -> argparse.ArgumentParser:
    """The options the terminal and the web chat share."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a model folder (default: the last trained part)")
    parser.add_argument("--persona", type=Path, help="a persona card (default: an assistant)")
    parser.add_argument(
        "--max-new-tokens",
        type=positive,
        default=200,
        help="reply length limit (default 200; at most half the context)",
    )
    return parser


@exit_on_error
def main() -> None:
    args = chat_arguments(__doc__).parse_args()
    model, tokenizer, card = load_chat_model(args.model, args.persona)
    context = model.config.max_position_embeddings
    chat = Chat(card, DEFAULT_SETTING, min(args.max_new_tokens, context // 2))
    keep_history(history_file())
    try:
        run(
            chat,
            lambda current: stream_reply(model, tokenizer, current),
            input,
            lambda text: print(text, end="", flush=True),
        )
    except KeyboardInterrupt:
        print()


if __name__ == "__main__":
    main()
