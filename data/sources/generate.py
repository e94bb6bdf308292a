"""Generate the committed sample inputs in data/sources/: seeded, deterministic, standard library only.

Usage: `python data/sources/generate.py [--seed 0] [--out data/sources] [--scale 1.0]`; the same seed
gives the same bytes (gzip with mtime 0). `--scale N` writes N times as many records for benchmarks
(streamed, memory stays flat; about 25 MB on disk and 15 s per `--scale 10`). The texts it draws from
(characters, roleplay lines, instruction-data tables) are JSON files in `generator/` beside this file.

Files and their contents (counts at --scale 1.0; --scale multiplies them):

- `pippa-sample.jsonl.gz`: 3000 conversations of 4-14 alternating messages, one JSON object per
  line, PIPPA fields (submission_timestamp in ms, categories, bot_id, bot_name, bot_greeting,
  bot_definitions, bot_description, conversation: [{message, is_human}]); 90% open with the
  bot's greeting. `{{char}}` and `{{user}}` placeholders appear in greetings, definitions,
  descriptions and some replies. As in PIPPA, a bot's conversations come together
  (in runs of 1-15, which also keeps the gzip small). Each conversation draws a length kind:
  "long" (60%: median bot reply 30-250 words, about a third of them above 160), "mid" (20%:
  median mostly 10-48 words; the greeting counts as a bot reply) or "short" (20%: replies such
  as "...", "Yes.", "*nods*", median 1-2 words, sometimes one longer reply mixed in). 2% extra
  lines are exact copies of a well-formed line written shortly before (within 400 lines).
- `alpaca-sample.json`: a JSON array, one record per line, of 500 {instruction, input, output}
  records (outputs 20-200 words; input "" except for summaries and classification), no two equal.
- `sharegpt-fresh.jsonl`: 600 conversations {id, bot_name, conversations: [{from, value}]} of
  4-10 messages from the same roster plus 8 newer characters; 75% open with a "system" message
  holding the persona; `{{char}}` is resolved to the bot's name, `{{user}}` is kept. Same length
  mix as PIPPA, no duplicates.

Planted malformed lines in `pippa-sample.jsonl.gz`: one line of each of these 12 kinds per
3000 conversations (max(1, round(scale)) of each kind), spread evenly through the file, never
duplicated. They are extra lines: the 3000 conversations are all well-formed. The first nine
break the PIPPA schema; the last three are schema-valid and must be caught by content checks.

- truncated_json: a record cut off in the middle (invalid JSON)
- json_array: the line is a JSON array (a bare list of messages), not an object
- missing_conversation: an object without the "conversation" field
- conversation_not_list: "conversation" is a string
- message_null: one message has "message": null
- message_int: one message has "message" as an integer
- is_human_string: one message has "is_human" as the string "true"
- message_not_object: one item of "conversation" is a bare string
- missing_bot_name: an object without the "bot_name" field
- all_human: every message is human, so there is no bot turn
- empty_conversation: "conversation" is an empty list
- whitespace_messages: every message is only whitespace

Planted malformed lines in `sharegpt-fresh.jsonl` (one of each per 600 conversations):

- unknown_from: a message with "from": "robot"
- missing_value: a message without "value"
- value_not_string: a message whose "value" is a list
"""

import argparse
import dataclasses
import gzip
import json
import random
import string
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAR, USER = "{{char}}", "{{user}}"  # PIPPA's placeholders for the bot's and the user's names

PIPPA_FILE = "pippa-sample.jsonl.gz"
ALPACA_FILE = "alpaca-sample.json"
SHAREGPT_FILE = "sharegpt-fresh.jsonl"

PIPPA_CONVERSATIONS = 3000
SHAREGPT_CONVERSATIONS = 600
ALPACA_RECORDS = 500
PIPPA_BOTS = 40  # PIPPA uses the first 40 characters; fresh logs also meet the 8 newer ones
DUPLICATE_RATE = 0.02  # exactly round(0.02 * conversations) duplicate lines
PIPPA_RUN_MEAN = 8  # like PIPPA, a bot's conversations come together (in runs of 1-15)
SHAREGPT_MAX_MESSAGES = 10
ALPACA_DEDUP_WINDOW = 5000
ALPACA_DEDUP_TRIES = 20
DUPLICATE_WINDOW = 400  # a duplicate repeats one of the last this-many well-formed lines

PIPPA_MALFORMED_KINDS = (
    "truncated_json",
    "json_array",
    "missing_conversation",
    "conversation_not_list",
    "message_null",
    "message_int",
    "is_human_string",
    "message_not_object",
    "missing_bot_name",
    "all_human",
    "empty_conversation",
    "whitespace_messages",
)
SHAREGPT_MALFORMED_KINDS = ("unknown_from", "missing_value", "value_not_string")

# Conversation length kinds: (name, share of conversations).
LENGTH_KINDS = (("long", 0.6), ("mid", 0.2), ("short", 0.2))

TIMESTAMP_START_MS = 1_669_852_800_000  # 2022-12-01 UTC
TIMESTAMP_SPAN_MS = 90 * 24 * 3600 * 1000

# ---------------------------------------------------------------- text tables

# The texts the generator draws from, loaded from JSON beside this file: characters.json (the 12
# character archetypes), roleplay.json (pools for bot and user turns) and instructions.json (the
# Alpaca record templates). JSON lists become tuples, so the tables stay immutable.
TABLES = Path(__file__).parent / "generator"


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    return value


def _load(name: str) -> dict[str, Any]:
    return json.loads((TABLES / name).read_text(encoding="utf-8"))


def _rows(records: list[dict[str, Any]], *fields: str) -> tuple[tuple[Any, ...], ...]:
    """JSON objects as tuples of the named fields, in that order."""
    return tuple(tuple(_frozen(record[field]) for field in fields) for record in records)


_CHARACTERS = _load("characters.json")
_ROLEPLAY = _load("roleplay.json")
_INSTRUCTIONS = _load("instructions.json")


# ---------------------------------------------------------------- characters


@dataclass(frozen=True)
class Archetype:
    key: str
    role: str
    place: str
    categories: tuple[str, ...]
    names: tuple[tuple[str, str], ...]  # (name, "he" | "she")
    traits: tuple[str, ...]
    props: tuple[str, ...]
    scenery: tuple[str, ...]
    lines: tuple[str, ...]
    hooks: tuple[str, ...]
    likes: tuple[str, ...]


def _archetype(data: dict[str, Any]) -> Archetype:
    fields = {key: _frozen(value) for key, value in data.items()}
    return Archetype(**{**fields, "names": tuple(data["names"].items())})


ARCHETYPES = tuple(_archetype(data) for data in _CHARACTERS["archetypes"])
PIPPA_CATEGORY_EXTRAS: tuple[str, ...] = _frozen(_CHARACTERS["category_extras"])

GESTURES: tuple[str, ...] = _frozen(_ROLEPLAY["gestures"])
GREETING_GESTURES = tuple(gesture for gesture in GESTURES if "{you}" not in gesture)
GESTURE_DETAILS: tuple[str, ...] = _frozen(_ROLEPLAY["gesture_details"])
THOUGHTS: tuple[str, ...] = _frozen(_ROLEPLAY["thoughts"])
AMBIENCE: tuple[str, ...] = _frozen(_ROLEPLAY["ambience"])
GENERAL_LINES: tuple[str, ...] = _frozen(_ROLEPLAY["general_lines"])
SHORT_REPLIES: tuple[str, ...] = _frozen(_ROLEPLAY["short_replies"])
USER_GESTURES: tuple[str, ...] = _frozen(_ROLEPLAY["user_gestures"])
USER_LINES: tuple[str, ...] = _frozen(_ROLEPLAY["user_lines"])


# ---------------------------------------------------------------- bots


@dataclass(frozen=True)
class Bot:
    bot_id: str
    name: str
    pronoun: str  # "he" | "she"
    archetype: Archetype
    traits: tuple[str, str]
    hook: str
    like: str
    categories: tuple[str, ...]
    greeting: str
    definitions: str
    description: str


def _random_id(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(length))


def _pronouns(pronoun: str) -> dict[str, str]:
    if pronoun == "he":
        return {"sub": "he", "Sub": "He", "obj": "him", "pos": "his"}
    return {"sub": "she", "Sub": "She", "obj": "her", "pos": "her"}


def _a(noun_phrase: str) -> str:
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_bots() -> list[Bot]:
    """The fixed character roster (48 bots: 4 names for each of the 12 archetypes), interleaved so
    that the first PIPPA_BOTS cover every archetype. The roster does not depend on the seed."""
    bots = []
    rng = random.Random("chatmill-roster")
    for slot in range(4):
        for archetype in ARCHETYPES:
            name, pronoun = archetype.names[slot]
            traits = tuple(rng.sample(archetype.traits, 2))
            hook, like = rng.choice(archetype.hooks), rng.choice(archetype.likes)
            extra = rng.choice(PIPPA_CATEGORY_EXTRAS)
            categories = archetype.categories[: rng.randint(1, len(archetype.categories))] + (extra,)
            bot = Bot(
                _random_id(rng, 43), name, pronoun, archetype, traits, hook, like, categories, "", "", ""
            )
            bots.append(_with_texts(rng, bot))
    return bots


def _with_texts(rng: random.Random, bot: Bot) -> Bot:
    """Add greeting, definitions and description (these use the {{char}}/{{user}} placeholders)."""
    p = _pronouns(bot.pronoun)
    arch = bot.archetype
    prop = rng.choice(arch.props)
    slots = {**p, "prop": prop, "place": arch.place, "you": USER, "your": USER + "'s"}
    greeting = " ".join(
        [
            f"*{CHAR} {rng.choice(GREETING_GESTURES).format(**slots)} as {USER} enters {arch.place}.*",
            *rng.sample(arch.scenery, 2),
            f'"{rng.choice(arch.lines).format(**slots)}"',
            f"*{rng.choice(THOUGHTS).format(**slots)}*",
            f'"{rng.choice(GENERAL_LINES).format(**slots)}"',
        ]
    )
    persona = (
        f"{CHAR} is {_a(bot.traits[0])} and {bot.traits[1]} {arch.role} who {bot.hook}. "
        f"{p['Sub']} can usually be found in {arch.place}. {p['Sub']} likes {bot.like}. "
        f"{p['Sub']} is rarely seen without {p['pos']} {prop}."
    )
    example_slots = {**slots, "you": "you", "your": "your"}
    definitions = (
        f"{CHAR}'s Persona: {persona}\n<START>\n"
        f"{USER}: {rng.choice(USER_LINES).format(name=CHAR, prop=prop, a_role=_a(arch.role))}\n"
        f"{CHAR}: *{p['Sub']} {rng.choice(GESTURES).format(**example_slots)}.* "
        f'"{rng.choice(arch.lines).format(**example_slots)}"'
    )
    description = f"{bot.name}, {_a(bot.traits[0])} {arch.role} who {bot.hook}."
    if rng.random() < 0.5:
        description += f" {CHAR} likes {bot.like}."
    return dataclasses.replace(bot, greeting=greeting, definitions=definitions, description=description)


# ---------------------------------------------------------------- messages


def _slots(bot: Bot, prop: str, name_first: bool, placeholder: bool) -> dict[str, str]:
    p = _pronouns(bot.pronoun)
    return {
        **p,
        "Sub": bot.name if name_first else p["Sub"],
        "prop": prop,
        "place": bot.archetype.place,
        "you": USER if placeholder else "you",
        "your": USER + "'s" if placeholder else "your",
    }


def _segment(rng: random.Random, kind: str, slots: dict[str, str], bot: Bot) -> str:
    """One piece of a bot reply: an action, a line of dialogue, a thought or a bit of scenery."""
    if kind == "action":
        action = f"{slots['Sub']} {rng.choice(GESTURES).format(**slots)}"
        if rng.random() < 0.6:
            action += ", " + rng.choice(GESTURE_DETAILS).format(**slots)
        return f"*{action}.*"
    if kind == "speech":
        lines = bot.archetype.lines if rng.random() < 0.6 else GENERAL_LINES
        return f'"{rng.choice(lines).format(**slots)}"'
    if kind == "thought":
        return f"*{rng.choice(THOUGHTS).format(**slots)}*"
    return rng.choice(bot.archetype.scenery if rng.random() < 0.75 else AMBIENCE)


# A reply is a sequence of beats; each beat is a short pattern of segment kinds.
BEATS: tuple[tuple[str, ...], ...] = _frozen(_ROLEPLAY["beats"])


SEGMENT_KINDS = ("action", "speech", "speech", "thought", "scenery")


def bot_reply(rng: random.Random, bot: Bot, target_words: int, prop: str) -> str:
    """A roleplay reply of at least target_words words (overshooting by less than one beat): beats of
    *actions*, quoted dialogue, thoughts and scenery, in paragraphs of about 60 words. The first action
    names the bot; a segment is not repeated within a reply where the pools allow."""
    placeholder = rng.random() < 0.25  # this reply calls the user {{user}} instead of "you"
    paragraphs: list[list[str]] = [[]]
    used: set[str] = set()
    words = paragraph_words = 0
    while words < target_words:
        if paragraph_words >= 60 and target_words - words > 20:
            paragraphs.append([])
            paragraph_words = 0
        if target_words < 40:  # short replies grow one segment at a time, so they stay near the target
            beat = (rng.choice(("action", "speech")) if words == 0 else rng.choice(SEGMENT_KINDS),)
        else:
            beat = ("action", "speech") if words == 0 else rng.choice(BEATS)
        for kind in beat:
            slots = _slots(bot, prop, name_first=words == 0, placeholder=placeholder)
            segment = _segment(rng, kind, slots, bot)
            for _ in range(4):
                if segment not in used:
                    break
                segment = _segment(rng, kind, slots, bot)
            used.add(segment)
            paragraphs[-1].append(segment)
            words += len(segment.split())
            paragraph_words += len(segment.split())
    return "\n\n".join(" ".join(paragraph) for paragraph in paragraphs)


def short_reply(rng: random.Random) -> str:
    return rng.choice(SHORT_REPLIES)


def user_message(rng: random.Random, bot: Bot, prop: str) -> str:
    """A user turn of 5 to 30 words: an optional *action* and one to three lines."""
    slots = {"name": bot.name, "prop": prop, "a_role": _a(bot.archetype.role)}
    parts = [rng.choice(USER_GESTURES).format(**slots)] if rng.random() < 0.4 else []
    for _ in range(rng.choice((1, 1, 1, 2, 2))):
        parts.append(rng.choice(USER_LINES).format(**slots))
    while len(" ".join(parts).split()) < 5:
        parts.append(rng.choice(USER_LINES).format(**slots))
    while len(" ".join(parts).split()) > 30:
        parts.pop(0)
    return " ".join(parts)


# ---------------------------------------------------------------- conversations


def length_kind(rng: random.Random) -> str:
    names, weights = zip(*LENGTH_KINDS, strict=True)
    return rng.choices(names, weights)[0]


def _bot_turns(rng: random.Random, bot: Bot, kind: str, count: int, prop: str) -> list[str]:
    """The bot replies of one conversation (greeting excluded), following its length kind."""
    if kind == "short":
        replies = [short_reply(rng) for _ in range(count)]
        if count >= 4 and rng.random() < 0.4:  # one longer reply mixed in; the median stays short
            replies[rng.randrange(count)] = bot_reply(rng, bot, rng.randint(15, 60), prop)
        return replies
    if kind == "mid":
        median = rng.randint(8, 36)
    else:  # long: medians 30-250 words, skewed so about a third lie above 160
        median = 30 + int(220 * rng.random() ** 1.25)
    return [bot_reply(rng, bot, max(8, round(median * rng.uniform(0.7, 1.3))), prop) for _ in range(count)]


def conversation_turns(
    rng: random.Random, bot: Bot, kind: str, max_messages: int = 14
) -> list[tuple[str, bool]]:
    """(text, is_human) turns, alternating, 4 to max_messages; most open with the bot's greeting."""
    length = rng.randint(5 if kind == "short" else 4, max_messages)  # short: 3+ bot turns keep it short
    starts_with_greeting = rng.random() < 0.9
    human_first = not starts_with_greeting and rng.random() < 0.7
    bot_count = length // 2 if human_first else (length + 1) // 2
    prop = rng.choice(bot.archetype.props)
    replies = _bot_turns(rng, bot, kind, bot_count - starts_with_greeting, prop)
    if starts_with_greeting:
        replies.insert(0, bot.greeting)
    turns = []
    for position in range(length):
        is_human = (position % 2 == 0) == human_first
        turns.append((user_message(rng, bot, prop), True) if is_human else (replies.pop(0), False))
    return turns


def pippa_record(rng: random.Random, bot: Bot, kind: str) -> dict[str, Any]:
    """One well-formed PIPPA conversation record."""
    return {
        "submission_timestamp": TIMESTAMP_START_MS + rng.randrange(TIMESTAMP_SPAN_MS),
        "categories": list(bot.categories),
        "bot_id": bot.bot_id,
        "bot_name": bot.name,
        "bot_greeting": bot.greeting,
        "bot_definitions": bot.definitions,
        "bot_description": bot.description,
        "conversation": [
            {"message": text, "is_human": is_human} for text, is_human in conversation_turns(rng, bot, kind)
        ],
    }


def malformed_pippa_line(rng: random.Random, bot: Bot, kind: str) -> str:
    """One planted malformed PIPPA line (see the module docstring for the kinds)."""
    record = pippa_record(rng, bot, rng.choice(("long", "mid")))
    messages = record["conversation"]
    bot_index = next(i for i, message in enumerate(messages) if not message["is_human"])
    if kind == "truncated_json":
        text = json.dumps(record)
        return text[: len(text) * 2 // 3]
    if kind == "json_array":
        return json.dumps(messages[:3])
    if kind == "missing_conversation":
        del record["conversation"]
    elif kind == "conversation_not_list":
        record["conversation"] = "\n".join(message["message"] for message in messages[:4])
    elif kind == "message_null":
        messages[bot_index]["message"] = None
    elif kind == "message_int":
        messages[bot_index]["message"] = rng.randint(1, 99)
    elif kind == "is_human_string":
        messages[bot_index]["is_human"] = "true"
    elif kind == "message_not_object":
        messages[bot_index] = messages[bot_index]["message"]
    elif kind == "missing_bot_name":
        del record["bot_name"]
    elif kind == "all_human":
        prop = rng.choice(bot.archetype.props)
        record["conversation"] = [
            {"message": user_message(rng, bot, prop), "is_human": True} for _ in range(4)
        ]
    elif kind == "empty_conversation":
        record["conversation"] = []
    elif kind == "whitespace_messages":
        for message in messages:
            message["message"] = rng.choice((" ", "  ", "\n", "\t", " \n "))
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return json.dumps(record)


def sharegpt_record(rng: random.Random, bot: Bot, kind: str) -> dict[str, Any]:
    """One well-formed ShareGPT conversation. `{{char}}` is resolved to the bot's name (as chat
    front-ends export it); `{{user}}` stays."""

    def resolve(text: str) -> str:
        return text.replace(CHAR, bot.name)

    messages = []
    if rng.random() < 0.75:
        persona = bot.definitions.split("\n<START>")[0] if rng.random() < 0.5 else bot.description
        messages.append({"from": "system", "value": resolve(persona)})
    for text, is_human in conversation_turns(rng, bot, kind, SHAREGPT_MAX_MESSAGES):
        messages.append({"from": "human" if is_human else "gpt", "value": resolve(text)})
    return {"id": _random_id(rng, 7), "bot_name": bot.name, "conversations": messages}


def malformed_sharegpt_line(rng: random.Random, bot: Bot, kind: str) -> str:
    record = sharegpt_record(rng, bot, "long")
    messages = record["conversations"]
    gpt_index = next(i for i, message in enumerate(messages) if message["from"] == "gpt")
    if kind == "unknown_from":
        messages[gpt_index]["from"] = "robot"
    elif kind == "missing_value":
        del messages[gpt_index]["value"]
    elif kind == "value_not_string":
        messages[gpt_index]["value"] = messages[gpt_index]["value"].split("\n\n")
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return json.dumps(record)


@dataclass(frozen=True)
class LineMix:
    """How a conversation file is laid out: records, planted faults, duplicates, runs per bot."""

    make_record: Callable[[random.Random, Bot, str], dict[str, Any]]
    make_malformed: Callable[[random.Random, Bot, str], str]
    malformed_kinds: tuple[str, ...]
    duplicate_rate: float  # exact copies of earlier lines, as a share of the well-formed records
    run_mean: int  # conversations come in runs of 1 .. 2 * run_mean - 1 with the same bot


def spread_positions(total: int, slots: int, rng: random.Random) -> list[int]:
    """`slots` distinct indices in range(total), one at a random offset in each of `slots` equal stretches."""
    stretch = total / slots
    return [int(stretch * i + rng.random() * stretch) for i in range(slots)]


def conversation_lines(
    rng: random.Random, bots: list[Bot], count: int, mix: LineMix, repeats: int
) -> Iterator[str]:
    """Stream `count` well-formed conversation lines with `repeats` planted malformed lines of each kind
    and exact duplicates of recent well-formed lines mixed in, both at evenly spread positions.
    Memory stays flat: only the last DUPLICATE_WINDOW lines are kept."""
    kinds = [
        kind for _ in range(repeats) for kind in rng.sample(mix.malformed_kinds, len(mix.malformed_kinds))
    ]
    malformed = dict(zip(spread_positions(count, len(kinds), rng), kinds, strict=True))
    duplicates = round(count * mix.duplicate_rate)
    duplicate_after = set(spread_positions(count, duplicates, rng)) if duplicates else set()
    recent: deque[str] = deque(maxlen=DUPLICATE_WINDOW)
    bot, run_left = bots[0], 0
    for index in range(count):
        if run_left == 0:
            bot, run_left = rng.choice(bots), rng.randint(1, 2 * mix.run_mean - 1)
        run_left -= 1
        if index in malformed:
            yield mix.make_malformed(rng, bot, malformed[index])
        line = json.dumps(mix.make_record(rng, bot, length_kind(rng)))
        recent.append(line)
        yield line
        if index in duplicate_after:
            yield rng.choice(recent)


# ---------------------------------------------------------------- instruction data

RECIPES = _rows(_INSTRUCTIONS["recipes"], "dish", "ingredients", "steps", "tip")
RECIPE_INSTRUCTIONS: tuple[str, ...] = _frozen(_INSTRUCTIONS["recipe_instructions"])
RECIPE_INTROS: tuple[str, ...] = _frozen(_INSTRUCTIONS["recipe_intros"])
CODE_TASKS = tuple(
    (task["task"], "\n".join(task["code"]), task["explanation"]) for task in _INSTRUCTIONS["code_tasks"]
)
CODE_INTROS: tuple[str, ...] = _frozen(_INSTRUCTIONS["code_intros"])
CLOSINGS: tuple[str, ...] = _frozen(_INSTRUCTIONS["closings"])
CODE_INSTRUCTIONS: tuple[str, ...] = _frozen(_INSTRUCTIONS["code_instructions"])
SUMMARY_TOPICS = _rows(_INSTRUCTIONS["summary_topics"], "sentences", "summary")
SUMMARY_INSTRUCTIONS: tuple[str, ...] = _frozen(_INSTRUCTIONS["summary_instructions"])
LIST_TOPICS = _rows(_INSTRUCTIONS["list_topics"], "topic", "items")
LIST_INSTRUCTIONS: tuple[str, ...] = _frozen(_INSTRUCTIONS["list_instructions"])
CONCEPTS = _rows(_INSTRUCTIONS["concepts"], "concept", "explanation")
CONCEPT_INSTRUCTIONS: tuple[str, ...] = _frozen(_INSTRUCTIONS["concept_instructions"])
ANIMALS = _rows(_INSTRUCTIONS["animals"], "animal", "group", "reason")
EMAILS = _rows(_INSTRUCTIONS["emails"], "to", "subject", "body")


def _recipe_record(rng: random.Random) -> dict[str, str]:
    dish, ingredients, steps, tip = rng.choice(RECIPES)
    intro = rng.choice(RECIPE_INTROS).format(dish=dish, Dish=_capitalize(dish))
    if rng.random() < 0.5:
        intro += f" It takes about {rng.choice((15, 20, 30, 45))} minutes."
    parts = [intro, "Ingredients:\n" + "\n".join(f"- {item}" for item in ingredients)]
    parts.append("Steps:\n" + "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1)))
    if rng.random() < 0.7:
        parts.append(f"Tip: {tip}")
    return {
        "instruction": rng.choice(RECIPE_INSTRUCTIONS).format(dish=dish),
        "input": "",
        "output": "\n\n".join(parts),
    }


def _code_record(rng: random.Random) -> dict[str, str]:
    task, code, explanation = rng.choice(CODE_TASKS)
    intro = rng.choice(CODE_INTROS).format(task=task)
    output = f"{intro}\n\n```python\n{code}\n```\n\n{explanation}{rng.choice(CLOSINGS)}"
    return {"instruction": rng.choice(CODE_INSTRUCTIONS).format(task=task), "input": "", "output": output}


def _summary_record(rng: random.Random) -> dict[str, str]:
    sentences, summary = rng.choice(SUMMARY_TOPICS)
    dropped = rng.randrange(len(sentences) + 1)  # leave out one sentence after the first, or none
    text = " ".join(sentence for i, sentence in enumerate(sentences) if i == 0 or i != dropped)
    return {
        "instruction": rng.choice(SUMMARY_INSTRUCTIONS),
        "input": text,
        "output": rng.choice(("", "In short: ", "Summary: ", "The main point is this: ")) + summary,
    }


def _list_record(rng: random.Random) -> dict[str, str]:
    topic, items = rng.choice(LIST_TOPICS)
    n = rng.randint(3, len(items))
    chosen = rng.sample(items, n)
    output = "\n".join(f"{i}. {item}" for i, item in enumerate(chosen, start=1))
    if n < 5 or rng.random() < 0.5:
        output = f"Here are {n} {topic}:\n\n{output}"
    return {
        "instruction": rng.choice(LIST_INSTRUCTIONS).format(n=n, topic=topic),
        "input": "",
        "output": output,
    }


def _concept_record(rng: random.Random) -> dict[str, str]:
    concept, explanation = rng.choice(CONCEPTS)
    opener = rng.choice(("", "", "Sure. ", "Good question! ", "In simple terms: "))
    return {
        "instruction": rng.choice(CONCEPT_INSTRUCTIONS).format(concept=concept),
        "input": "",
        "output": opener + explanation + rng.choice(CLOSINGS),
    }


def _classify_record(rng: random.Random) -> dict[str, str]:
    animal, group, reason = rng.choice(ANIMALS)
    instruction = rng.choice(
        (
            "Is the following animal a mammal, bird, fish, reptile or amphibian? Explain why.",
            "Classify this animal as a mammal, bird, fish, reptile or amphibian, and give a reason.",
            "Which group of animals does this one belong to?",
        )
    )
    output = f"The {animal} is {_a(group)}. {reason} That is why it is grouped with the other {group}s."
    return {"instruction": instruction, "input": animal, "output": output}


def _email_record(rng: random.Random) -> dict[str, str]:
    purpose, subject, body = rng.choice(EMAILS)
    greeting = rng.choice(("Hello", "Hi", "Dear all" if "neighbours" in purpose else "Good morning"))
    sign_off = rng.choice(("Best regards", "Kind regards", "Thank you", "All the best"))
    name = rng.choice(("Sam", "Alex", "Jordan", "Maria", "Tom", "Priya"))
    output = f"Subject: {subject}\n\n{greeting},\n\n{body}\n\n{sign_off},\n{name}"
    return {"instruction": f"Write a short email to {purpose}.", "input": "", "output": output}


ALPACA_KINDS: tuple[tuple[Callable[[random.Random], dict[str, str]], float], ...] = (
    (_recipe_record, 0.18),
    (_code_record, 0.18),
    (_summary_record, 0.16),
    (_list_record, 0.18),
    (_concept_record, 0.16),
    (_classify_record, 0.05),
    (_email_record, 0.09),
)


def alpaca_record(rng: random.Random) -> dict[str, str]:
    """One instruction record: a recipe, a Python function, a summary, a list, an explanation, etc."""
    makers, weights = zip(*ALPACA_KINDS, strict=True)
    return rng.choices(makers, weights)[0](rng)


# ---------------------------------------------------------------- files


def write_pippa(path: Path, seed: int, scale: float) -> None:
    rng = random.Random(f"{seed}:pippa")
    bots = make_bots()[:PIPPA_BOTS]
    count = max(1, round(PIPPA_CONVERSATIONS * scale))
    mix = LineMix(pippa_record, malformed_pippa_line, PIPPA_MALFORMED_KINDS, DUPLICATE_RATE, PIPPA_RUN_MEAN)
    lines = conversation_lines(rng, bots, count, mix, repeats=max(1, round(scale)))
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out,
    ):
        for line in lines:
            out.write(line.encode() + b"\n")


def write_sharegpt(path: Path, seed: int, scale: float) -> None:
    rng = random.Random(f"{seed}:sharegpt")
    count = max(1, round(SHAREGPT_CONVERSATIONS * scale))
    mix = LineMix(sharegpt_record, malformed_sharegpt_line, SHAREGPT_MALFORMED_KINDS, 0.0, run_mean=1)
    lines = conversation_lines(rng, make_bots(), count, mix, repeats=max(1, round(scale)))
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for line in lines:
            out.write(line + "\n")


def alpaca_lines(rng: random.Random, count: int) -> Iterator[str]:
    """`count` records as JSON lines. The templates allow a limited number of distinct records, so a
    record equal to one of the last ALPACA_DEDUP_WINDOW is redrawn (a few tries, then kept)."""
    recent: deque[str] = deque()
    seen: set[str] = set()
    for _ in range(count):
        line = json.dumps(alpaca_record(rng))
        for _ in range(ALPACA_DEDUP_TRIES):
            if line not in seen:
                break
            line = json.dumps(alpaca_record(rng))
        if line not in seen:
            recent.append(line)
            seen.add(line)
            if len(recent) > ALPACA_DEDUP_WINDOW:
                seen.discard(recent.popleft())
        yield line


def write_alpaca(path: Path, seed: int, scale: float) -> None:
    """A JSON array with one record per line (streamed, so --scale can make it large)."""
    rng = random.Random(f"{seed}:alpaca")
    count = max(1, round(ALPACA_RECORDS * scale))
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write("[\n")
        for index, line in enumerate(alpaca_lines(rng, count)):
            out.write(line + (",\n" if index < count - 1 else "\n"))
        out.write("]\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("data/sources"))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the conversation/record counts")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, write in (
        (PIPPA_FILE, write_pippa),
        (ALPACA_FILE, write_alpaca),
        (SHAREGPT_FILE, write_sharegpt),
    ):
        path = args.out / name
        temporary = path.with_name(path.name + ".tmp")
        write(temporary, args.seed, args.scale)
        temporary.replace(path)
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
