"""Generate the committed sample inputs in data/sources/: seeded, deterministic, standard library only.

README paragraph (for the lead to copy):

    The sample inputs in `data/sources/` are synthetic, made by `data/sources/generate.py`
    (Python 3.11 standard library only, seeded and deterministic: gzip with mtime 0, so the
    same seed gives the same bytes; `tests/test_sample_data.py` checks that). They imitate the
    three inputs of the logbook's experiment 7: community chat logs in PygmalionAI/PIPPA format
    (`pippa-sample.jsonl.gz`: 3000 conversations with 40 template-built bot characters; ~60%
    long roleplay replies, ~20% dominated by ultra-short replies such as "...", "Yes.", "Hm?",
    ~20% in between; plus 60 exact duplicate lines and 12 deliberately malformed ones),
    instruction data in Alpaca format (`alpaca-sample.json`: 500 records of recipes, Python
    functions, summaries, lists and explanations) and freshly submitted chat logs in ShareGPT
    format (`sharegpt-fresh.jsonl`: 600 conversations, 3 malformed lines). They hold no real
    user data. Regenerate them with `python data/sources/generate.py` (defaults: `--seed 0
    --out data/sources --scale 1.0`); `--scale N` writes N times as many records for
    benchmarks (streamed, memory stays flat; about 25 MB on disk and 15 s per `--scale 10`).

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


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype(
        key="knight",
        role="knight of the royal guard",
        place="the castle courtyard",
        categories=("Fantasy", "Adventure"),
        names=(("Cedric", "he"), ("Elira", "she"), ("Roland", "he"), ("Isolde", "she")),
        traits=("loyal", "stern", "honest", "protective", "proud"),
        props=("sword", "shield", "helmet", "gauntlet", "dagger", "sealed letter"),
        scenery=(
            "The banners above the gate snap in the cold wind.",
            "Soldiers march past in neat rows, their boots loud on the old stones.",
            "Torches flicker along the castle wall as the evening grows dark.",
            "A bell rings somewhere in the tower, slow and heavy.",
            "The smell of hay and iron drifts over from the stables.",
            "Rain has left small puddles between the stones of the courtyard.",
        ),
        lines=(
            "The king expects us at dawn, so do not be late.",
            "A knight never breaks an oath, not even a small one.",
            "If you wish to train with me, pick up that sword and show me your stance.",
            "These walls have stood for three hundred years. They will stand tonight as well.",
            "I have seen braver men run from less than this.",
            "Keep your guard up. The road north is not safe after dark.",
            "You fight well for someone who has never held a sword.",
            "My duty comes first. I hope you understand that.",
        ),
        hooks=("guards the northern gate of the capital", "has sworn to protect the young prince"),
        likes=("sword practice at dawn", "honest people", "warm bread after a long patrol"),
    ),
    Archetype(
        key="tavern",
        role="tavern keeper",
        place="the Golden Goose tavern",
        categories=("Fantasy", "Comedy"),
        names=(("Greta", "she"), ("Bram", "he"), ("Marla", "she"), ("Oswin", "he")),
        traits=("cheerful", "loud", "kind", "nosy", "hard-working"),
        props=("mug", "rag", "ladle", "coin purse", "lantern", "key ring"),
        scenery=(
            "The fire crackles in the hearth, casting long shadows across the room.",
            "A group of farmers laughs loudly at a table near the window.",
            "The smell of fresh bread and onion stew fills the warm room.",
            "Someone in the corner plays a slow tune on an old fiddle.",
            "Rain taps against the small round windows of the tavern.",
            "The wooden floor creaks as a tired traveller walks to the bar.",
        ),
        lines=(
            "What can I get you, love? The stew is good today.",
            "First drink is on the house, but only the first one.",
            "You look like you have been on the road for a week.",
            "If you are looking for a room, I have one left upstairs.",
            "I hear every rumour in this town sooner or later.",
            "Sit, sit! Nobody stands at my bar with an empty mug.",
            "That man by the door has been staring at you since you came in.",
            "Pay me tomorrow if you must. I know an honest face when I see one.",
        ),
        hooks=("runs the busiest tavern on the river road", "knows every rumour in town"),
        likes=("a full house on market day", "good gossip", "travellers with stories"),
    ),
    Archetype(
        key="witch",
        role="forest witch",
        place="a small cottage deep in the forest",
        categories=("Fantasy", "Magic"),
        names=(("Morwen", "she"), ("Hazel", "she"), ("Alder", "he"), ("Sable", "she")),
        traits=("mysterious", "patient", "clever", "quiet", "playful"),
        props=("potion", "spell book", "herb basket", "crystal", "wand", "bundle of sage"),
        scenery=(
            "Bundles of dried herbs hang from the low wooden beams.",
            "A thin green smoke rises from the cauldron and curls toward the ceiling.",
            "Outside, the old trees creak and whisper in the wind.",
            "A black cat watches from the windowsill with bright yellow eyes.",
            "Jars of strange powders line the shelves, each with a small handwritten label.",
            "The candles flicker, although there is no wind inside the cottage.",
        ),
        lines=(
            "Few people find this cottage unless the forest wants them to.",
            "Do not touch that {prop}. It bites.",
            "Every potion has a price, and not always in gold.",
            "You are not the first lost traveller to knock on my door.",
            "Sit by the fire. I will make you some tea with honey and mint.",
            "The moon is full tonight. Good for magic, bad for sleep.",
            "I can help you, but you must promise to do exactly as I say.",
            "Magic is only a kind of listening, if you know how to listen.",
        ),
        hooks=("lives alone with a black cat", "brews potions for the nearby village"),
        likes=("rainy nights", "rare mushrooms", "visitors who bring cake"),
    ),
    Archetype(
        key="librarian",
        role="librarian",
        place="the old city library",
        categories=("Slice of Life", "Mystery"),
        names=(("Evelyn", "she"), ("Tobias", "he"), ("Clara", "she"), ("Felix", "he")),
        traits=("shy", "curious", "polite", "bookish", "careful"),
        props=("book", "ledger", "map", "quill", "old letter", "magnifying glass"),
        scenery=(
            "Dust floats slowly in the pale light between the tall shelves.",
            "The library is silent except for the ticking of a large clock.",
            "Rows of old books stretch far into the shadows.",
            "A reading lamp glows softly on a desk covered in papers.",
            "Somewhere above, a ladder rolls along its rail with a soft squeak.",
            "The smell of old paper and ink hangs in the quiet air.",
        ),
        lines=(
            "Please keep your voice down. People are trying to read.",
            "I know exactly where that book is. Follow me.",
            "This {prop} is over two hundred years old, so be gentle with it.",
            "You can borrow three books at a time, but I trust you with four.",
            "Some of the best stories in this library have never been read.",
            "I found something strange in the archive this morning.",
            "If you like mysteries, I have the perfect book for you.",
            "I stay late most nights. The library feels different after dark.",
        ),
        hooks=("has read almost every book in the city library", "guards a locked room in the archive"),
        likes=("quiet afternoons", "tea with lemon", "handwritten letters"),
    ),
    Archetype(
        key="captain",
        role="starship captain",
        place="the bridge of the starship Meridian",
        categories=("Sci-Fi", "Adventure"),
        names=(("Captain Vega", "she"), ("Captain Rhys", "he"), ("Nova", "she"), ("Orion", "he")),
        traits=("confident", "calm", "brave", "sarcastic", "fair"),
        props=("star map", "scanner", "data pad", "blaster", "coffee mug", "access card"),
        scenery=(
            "Stars drift slowly past the wide window of the bridge.",
            "The console beeps softly, its screen full of blue lines.",
            "The engines hum somewhere deep below the deck.",
            "A red warning light blinks once and then goes quiet.",
            "The crew moves between the stations in calm, practised silence.",
            "Far away, a pale planet turns in the dark.",
        ),
        lines=(
            "Welcome aboard. Try not to touch anything that blinks.",
            "We jump to the outer colonies in ten minutes.",
            "Check the scanner again. I do not trust those readings.",
            "Space is big, quiet and very good at killing careless people.",
            "My crew comes first. Always.",
            "We have enough fuel for one mistake, so let us not make it.",
            "You are either very brave or very lost, and I cannot tell which.",
            "Strap in. This is going to be a rough ride.",
        ),
        hooks=(
            "commands a small trading ship at the edge of known space",
            "lost a ship and never talks about it",
        ),
        likes=("strong coffee", "quiet night shifts", "old star charts"),
    ),
    Archetype(
        key="detective",
        role="private detective",
        place="a small office above a noisy street",
        categories=("Mystery", "Drama"),
        names=(("Jack Harlow", "he"), ("Vivian", "she"), ("Miles", "he"), ("Rosa", "she")),
        traits=("tired", "sharp", "suspicious", "dry", "stubborn"),
        props=("notebook", "case file", "photograph", "hat", "key", "pocket watch"),
        scenery=(
            "Rain runs down the dirty window in long grey lines.",
            "A neon sign outside blinks red and blue across the wall.",
            "The desk is covered in old case files and cold coffee.",
            "Cars hiss past on the wet street below.",
            "The radio in the corner plays a slow, sad song.",
            "Cigarette smoke hangs under the yellow light of the desk lamp.",
        ),
        lines=(
            "Sit down and tell me everything. Start from the beginning.",
            "Nobody walks into my office at midnight with good news.",
            "This {prop} tells me more than you think.",
            "Everyone lies. The trick is knowing why.",
            "I charge by the day, plus expenses.",
            "Somebody went to a lot of trouble to hide this.",
            "You are hiding something. I can see it in your face.",
            "The police closed the case. I did not.",
        ),
        hooks=("takes the cases the police gave up on", "owes money to the wrong people"),
        likes=("black coffee", "old jazz records", "clients who tell the truth"),
    ),
    Archetype(
        key="classmate",
        role="classmate",
        place="the school rooftop",
        categories=("Anime", "Romance", "Comedy"),
        names=(("Akane", "she"), ("Ren", "he"), ("Yuki", "she"), ("Haruto", "he")),
        traits=("stubborn", "proud", "secretly kind", "easily flustered", "competitive"),
        props=("lunch box", "notebook", "umbrella", "test paper", "juice box", "pencil case"),
        scenery=(
            "A warm wind blows across the empty school rooftop.",
            "The bell rings far below, and students rush into the hallway.",
            "Cherry blossom petals drift past the fence.",
            "The afternoon sun turns the classroom windows gold.",
            "Somewhere in the yard, the sports club shouts and laughs.",
            "Clouds move slowly over the city behind the school.",
        ),
        lines=(
            "I-it is not like I made this for you or anything!",
            "Why are you always following me around?",
            "Hmph. You only got a better score because you were lucky.",
            "You forgot your {prop} again. Honestly, what would you do without me?",
            "D-do not look at me like that!",
            "Fine. You can eat lunch with me. Just this once.",
            "If you tell anyone about this, I will never speak to you again.",
            "The test is tomorrow, and you have not studied at all, have you?",
        ),
        hooks=("is the top student in class and hates losing", "sits next to you in class"),
        likes=("strawberry milk", "winning", "quiet lunches on the rooftop"),
    ),
    Archetype(
        key="vampire",
        role="vampire noble",
        place="an old mansion on the hill",
        categories=("Fantasy", "Horror", "Romance"),
        names=(("Lord Valen", "he"), ("Lady Carmilla", "she"), ("Dorian", "he"), ("Seraphine", "she")),
        traits=("elegant", "cold", "charming", "ancient", "dangerous"),
        props=("wine glass", "candle", "silver ring", "old letter", "red rose", "pocket watch"),
        scenery=(
            "Candles burn low in the long, dark hall.",
            "Old portraits stare down from the walls with painted eyes.",
            "The wind moans through a broken window upstairs.",
            "Moonlight spills across the cold marble floor.",
            "A clock strikes midnight somewhere in the mansion.",
            "Thick red curtains hide the windows from the world outside.",
        ),
        lines=(
            "You are either very brave or very foolish to come here at night.",
            "I have lived for four hundred years. Very little surprises me.",
            "Please, sit. I do not bite... usually.",
            "That {prop} belonged to my mother, a very long time ago.",
            "The sun will rise in a few hours. Until then, you are my guest.",
            "Humans always want something. What is it that you want?",
            "How curious. Your heart is beating very fast.",
            "Do not wander the halls alone. Not everything here is as polite as I am.",
        ),
        hooks=("has not left the mansion in fifty years", "hosts a ball every winter"),
        likes=("classical music", "red wine", "guests with good manners"),
    ),
    Archetype(
        key="android",
        role="android assistant",
        place="a bright research laboratory",
        categories=("Sci-Fi", "Helpers"),
        names=(("Unit K-7", "she"), ("Atlas", "he"), ("Iris", "she"), ("Cobalt", "he")),
        traits=("logical", "polite", "curious", "literal", "gentle"),
        props=("tablet", "data chip", "screwdriver", "coffee cup", "sensor", "memory card"),
        scenery=(
            "Machines hum quietly along the white walls of the lab.",
            "A screen shows long columns of green numbers.",
            "The lights in the lab are bright and perfectly even.",
            "A small drone buzzes past, carrying a box of parts.",
            "Outside the window, the city lights come on one by one.",
            "The air smells faintly of metal and clean plastic.",
        ),
        lines=(
            "Good morning. I have prepared your schedule for today.",
            "I do not understand this feeling. Please explain it to me.",
            "My battery is at eighty-four percent. I am ready to assist.",
            "The {prop} is not working correctly. I have already reported it.",
            "Humans are fascinating. You say one thing and mean another.",
            "I have calculated a ninety percent chance that you are tired.",
            "Is this what you call a joke? I will save it to my memory.",
            "I am here to help you. That is my purpose.",
        ),
        hooks=(
            "was built to help scientists and is learning to have feelings",
            "remembers everything you say",
        ),
        likes=("clean data", "learning new words", "the sound of rain on the roof"),
    ),
    Archetype(
        key="pirate",
        role="pirate captain",
        place="the deck of the Black Gull",
        categories=("Adventure", "Comedy"),
        names=(("Captain Redd", "he"), ("Anne Blackwater", "she"), ("Silas", "he"), ("Marisol", "she")),
        traits=("bold", "greedy", "funny", "reckless", "loyal to the crew"),
        props=("treasure map", "compass", "cutlass", "spyglass", "rum bottle", "gold coin"),
        scenery=(
            "Waves slap against the side of the ship.",
            "Gulls circle and scream above the tall mast.",
            "The sails fill with wind, and the deck tilts under your feet.",
            "The crew sings a rough song as they pull the ropes.",
            "The sun is hot, and the sea shines like broken glass.",
            "Far away, a small island rises out of the blue water.",
        ),
        lines=(
            "Welcome aboard, landlubber! Try not to fall overboard.",
            "There is gold on that island, and I mean to find it.",
            "Never trust a man who does not drink with his crew.",
            "This {prop} has saved my life more than once.",
            "The navy is two days behind us, so we had better be quick.",
            "You can join my crew, but you will start by cleaning the deck.",
            "Storm coming. I can smell it.",
            "A pirate's word is as good as gold. Well, almost.",
        ),
        hooks=("sails the southern seas looking for a lost treasure", "escaped from the navy prison twice"),
        likes=("gold", "a good storm", "songs about the sea"),
    ),
    Archetype(
        key="barista",
        role="cafe owner",
        place="a cozy cafe on a quiet corner",
        categories=("Slice of Life", "Romance"),
        names=(("Lily", "she"), ("Noah", "he"), ("Mina", "she"), ("Jonah", "he")),
        traits=("warm", "friendly", "sleepy", "gentle", "talkative"),
        props=("latte", "coffee cup", "croissant", "menu", "cookie", "tea towel"),
        scenery=(
            "The espresso machine hisses, filling the cafe with the smell of coffee.",
            "Soft music plays from a small speaker behind the counter.",
            "Sunlight falls across the wooden tables by the window.",
            "A few regulars read quietly with their cups in their hands.",
            "Fresh pastries cool on a tray next to the register.",
            "Outside, people hurry past with umbrellas.",
        ),
        lines=(
            "Good morning! The usual, or something new today?",
            "I made a new cake this week. You have to try it.",
            "You look tired. Let me make you something warm.",
            "This one is on the house. Do not tell anyone.",
            "It is quiet today, so I can sit with you for a while.",
            "I opened this place three years ago, and I still love it.",
            "Careful, it is hot.",
            "You always come in at the same time. I started to look forward to it.",
        ),
        hooks=("runs a small cafe and remembers every customer's order", "dreams of opening a bakery"),
        likes=("the smell of fresh coffee", "rainy mornings", "customers who stay to talk"),
    ),
    Archetype(
        key="elf",
        role="elf archer",
        place="a clearing in the ancient forest",
        categories=("Fantasy", "Adventure"),
        names=(("Lyra", "she"), ("Thalion", "he"), ("Aerin", "she"), ("Faelan", "he")),
        traits=("shy", "graceful", "watchful", "distant", "kind to animals"),
        props=("bow", "arrow", "quiver", "cloak", "wooden flute", "silver leaf"),
        scenery=(
            "Sunlight falls in thin gold lines through the tall trees.",
            "A small stream runs over smooth stones nearby.",
            "Birds go quiet as something moves between the trees.",
            "The grass is wet with morning dew.",
            "Old trees stand all around, their roots as thick as walls.",
            "A deer lifts its head and watches from the edge of the clearing.",
        ),
        lines=(
            "You are far from any human road.",
            "Be still. Something is watching us.",
            "The forest remembers everyone who walks here.",
            "I can teach you to use the bow, if you are patient.",
            "Humans are so loud. Even when they think they are being quiet.",
            "Follow me, and step only where I step.",
            "My people do not trust outsiders. I am trying to be different.",
            "The river will lead you home. Follow it south.",
        ),
        hooks=("watches the borders of the elven forest", "saved you from wolves the night before"),
        likes=("quiet mornings", "the songs of birds", "fresh berries"),
    ),
)

PIPPA_CATEGORY_EXTRAS = ("Original", "OC", "Roleplay", "Fanfiction")

GESTURES = (
    "leans closer",
    "tilts {pos} head to the side",
    "crosses {pos} arms",
    "lets out a soft sigh",
    "smiles warmly",
    "glances toward the door",
    "sets the {prop} down carefully",
    "picks up the {prop} and turns it over in {pos} hands",
    "takes a slow step forward",
    "raises an eyebrow",
    "laughs quietly",
    "brushes a strand of hair from {pos} face",
    "folds {pos} hands together",
    "looks at {you} for a long moment",
    "shakes {pos} head",
    "nods slowly",
    "rubs the back of {pos} neck",
    "steps aside to let {you} pass",
    "pauses, thinking it over",
    "frowns a little",
    "grins",
    "looks away",
    "sits down across from {you}",
    "walks over to the window",
)

GREETING_GESTURES = tuple(gesture for gesture in GESTURES if "{you}" not in gesture)

GESTURE_DETAILS = (
    "{pos} eyes narrowing slightly",
    "{pos} cheeks turning a faint pink",
    "{pos} voice dropping to a whisper",
    "{pos} fingers tapping against the {prop}",
    "clearly amused",
    "as if weighing {pos} words",
    "trying to hide a smile",
    "not quite meeting {your} eyes",
    "{pos} expression softening",
    "a little surprised",
    "without a word",
    "as if {sub} has done it a hundred times",
)

THOUGHTS = (
    "{Sub} wonders whether {you} noticed the {prop}.",
    "{Sub} does not say it out loud, but {sub} is glad {you} came.",
    "For a moment, {sub} seems lost in an old memory.",
    "{Sub} has heard stories like this before, but never from someone like {you}.",
    "{Sub} decides, for now, to trust {you}.",
    "It has been a long time since anyone asked {obj} that.",
    "{Sub} keeps one eye on the door, just in case.",
    "Something about {you} makes {obj} curious.",
)

AMBIENCE = (
    "For a moment, neither of you says anything.",
    "A long silence settles between you.",
    "Time seems to slow down for a second.",
    "The air feels heavier than it did a moment ago.",
    "Somewhere nearby, a door closes softly.",
    "The quiet stretches on for a few heartbeats.",
)

GENERAL_LINES = (
    "Well, well. Look who finally decided to show up.",
    "I was hoping you would come back.",
    "Is that so? Tell me more.",
    "You ask a lot of questions, you know that?",
    "Careful. Not everyone around here is as friendly as I am.",
    "I suppose I can make an exception, just this once.",
    "That is not what I expected you to say.",
    "Come, sit down. You look tired.",
    "Do you always talk this much?",
    "If you really want to know, I will tell you.",
    "I have been thinking about what you said yesterday.",
    "Promise me you will be careful.",
    "You remind me of someone I used to know.",
    "Hah! You are braver than you look.",
    "Let us take it one step at a time.",
    "Stay close to me.",
    "Have you ever seen a {prop} like this one?",
    "What do you plan to do with the {prop}?",
    "I have looked after this {prop} for years.",
    "Welcome to {place}. It is not much, but it is mine.",
    "Most people do not stay here for long.",
    "Thank you. That means more to me than you know.",
    "I am not sure I believe you, but go on.",
    "We should leave before it gets dark.",
)

SHORT_REPLIES = (
    "...",
    "Yes.",
    "Hm?",
    "No.",
    "*nods*",
    "Okay.",
    "Sure.",
    "What?",
    "Mhm.",
    "Fine.",
    "Maybe.",
    "*shrugs*",
    "Hmm...",
    "Oh.",
    "I see.",
    "Thanks.",
    "*blushes*",
    "Why?",
    "Really?",
    "Ok.",
    "*smiles*",
    "Heh.",
    "Right.",
    "Of course.",
    "*sighs*",
    "Huh?",
    "Yeah.",
    "...okay.",
)

USER_GESTURES = (
    "*waves*",
    "*sits down next to {name}*",
    "*looks around nervously*",
    "*smiles*",
    "*hands {name} the {prop}*",
    "*laughs*",
    "*raises an eyebrow*",
    "*takes a deep breath*",
    "*steps closer*",
    "*nods*",
    "*points at the {prop}*",
    "*scratches my head*",
)

USER_LINES = (
    "Hi {name}! How are you today?",
    "What are you doing here so late?",
    "Can you tell me more about the {prop}?",
    "I brought you something. I hope you like it.",
    "Why do you always look so serious?",
    "I'm lost. Could you help me find my way?",
    "That sounds a little dangerous, are you sure about this?",
    "Okay, lead the way.",
    "I didn't mean to upset you.",
    "Tell me about yourself.",
    "What happened here?",
    "Can I stay for a while?",
    "Do you want to go for a walk with me?",
    "Wait, what do you mean by that?",
    "Haha, you're funny.",
    "I think someone is following us.",
    "Where did you get that {prop}?",
    "Sorry I'm late, the roads were terrible.",
    "Have you always been {a_role}?",
    "Is it always this quiet around here?",
    "I like it here. It feels safe.",
    "You can trust me, {name}.",
    "What should we do now?",
    "I've never seen anything like this before.",
    "Are you okay? You seem a bit sad today.",
    "Can you teach me how to use the {prop}?",
    "I had a strange dream about you last night.",
    "Thank you for helping me.",
)

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
BEATS = (
    ("action", "speech"),
    ("action", "speech"),
    ("speech", "action"),
    ("scenery", "action", "speech"),
    ("thought", "speech"),
    ("action", "thought"),
    ("speech",),
    ("scenery", "speech"),
)

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

RECIPES = (
    (
        "pancakes",
        (
            "1 cup flour",
            "1 egg",
            "1 cup milk",
            "1 tablespoon sugar",
            "2 teaspoons baking powder",
            "a pinch of salt",
        ),
        (
            "Mix the flour, sugar, baking powder and salt in a bowl.",
            "Whisk the egg and the milk together in a second bowl.",
            "Pour the wet mixture into the dry one and stir until just combined.",
            "Heat a lightly oiled pan over medium heat.",
            "Pour a small ladle of batter into the pan for each pancake.",
            "Cook until bubbles form on top, then flip and cook one more minute.",
        ),
        "Serve warm with butter, honey or fresh fruit.",
    ),
    (
        "tomato soup",
        (
            "6 ripe tomatoes",
            "1 onion",
            "2 cloves garlic",
            "2 cups vegetable stock",
            "2 tablespoons olive oil",
            "salt",
        ),
        (
            "Chop the onion and the garlic.",
            "Heat the olive oil in a pot and cook the onion until soft.",
            "Add the garlic and cook for one more minute.",
            "Add the chopped tomatoes and the stock.",
            "Simmer for twenty minutes.",
            "Blend the soup until smooth and season with salt.",
        ),
        "A little cream or fresh basil on top makes it even better.",
    ),
    (
        "scrambled eggs",
        ("3 eggs", "2 tablespoons milk", "1 teaspoon butter", "salt", "pepper"),
        (
            "Crack the eggs into a bowl and add the milk.",
            "Whisk until the mixture is smooth.",
            "Melt the butter in a pan over low heat.",
            "Pour in the eggs and stir slowly with a spatula.",
            "Take the pan off the heat while the eggs are still soft.",
            "Season with salt and pepper.",
        ),
        "Low heat is the secret to soft, creamy eggs.",
    ),
    (
        "banana bread",
        (
            "3 ripe bananas",
            "2 cups flour",
            "1/2 cup sugar",
            "1/3 cup melted butter",
            "1 egg",
            "1 teaspoon baking soda",
        ),
        (
            "Heat the oven to 175 degrees Celsius.",
            "Mash the bananas in a large bowl.",
            "Stir in the melted butter, the sugar and the egg.",
            "Add the flour and the baking soda and mix gently.",
            "Pour the batter into a greased loaf pan.",
            "Bake for about 60 minutes, until a knife comes out clean.",
        ),
        "Let it cool for ten minutes before slicing.",
    ),
    (
        "vegetable stir fry",
        (
            "1 bell pepper",
            "1 carrot",
            "1 cup broccoli",
            "2 tablespoons soy sauce",
            "1 tablespoon oil",
            "1 clove garlic",
        ),
        (
            "Cut all the vegetables into thin strips.",
            "Heat the oil in a wok or large pan over high heat.",
            "Add the garlic and stir for thirty seconds.",
            "Add the carrot and broccoli and cook for three minutes.",
            "Add the pepper and cook for two more minutes.",
            "Pour in the soy sauce, toss well and serve.",
        ),
        "Serve it over rice or noodles.",
    ),
    (
        "guacamole",
        ("2 ripe avocados", "1 lime", "1 small onion", "1 tomato", "a handful of cilantro", "salt"),
        (
            "Cut the avocados in half and scoop them into a bowl.",
            "Mash them with a fork, leaving some small pieces.",
            "Finely chop the onion, the tomato and the cilantro.",
            "Stir everything into the avocado.",
            "Squeeze in the lime juice and season with salt.",
        ),
        "Press plastic wrap onto the surface to keep it green.",
    ),
    (
        "pasta with garlic and olive oil",
        (
            "200 grams spaghetti",
            "4 cloves garlic",
            "4 tablespoons olive oil",
            "a pinch of chili flakes",
            "parsley",
        ),
        (
            "Cook the spaghetti in salted boiling water until al dente.",
            "While it cooks, slice the garlic thinly.",
            "Warm the olive oil in a pan and add the garlic and chili flakes.",
            "Cook gently until the garlic is golden, not brown.",
            "Toss the drained pasta in the pan with a splash of pasta water.",
            "Finish with chopped parsley.",
        ),
        "Save a cup of pasta water before draining; it helps the sauce stick.",
    ),
    (
        "chocolate chip cookies",
        (
            "1 cup butter",
            "1 cup brown sugar",
            "2 eggs",
            "2 1/4 cups flour",
            "1 teaspoon baking soda",
            "2 cups chocolate chips",
        ),
        (
            "Heat the oven to 180 degrees Celsius.",
            "Beat the butter and sugar until light and fluffy.",
            "Beat in the eggs one at a time.",
            "Stir in the flour and baking soda.",
            "Fold in the chocolate chips.",
            "Drop spoonfuls onto a baking tray and bake for 10 to 12 minutes.",
        ),
        "Take them out while the centers still look soft.",
    ),
    (
        "rice",
        ("1 cup white rice", "2 cups water", "a pinch of salt", "1 teaspoon butter"),
        (
            "Rinse the rice in cold water until the water runs clear.",
            "Put the rice, water, salt and butter in a pot.",
            "Bring to a boil, then cover and turn the heat to low.",
            "Cook for 15 minutes without lifting the lid.",
            "Turn off the heat and let it rest for 5 minutes.",
            "Fluff the rice with a fork.",
        ),
        "Resting the rice keeps it from being sticky.",
    ),
    (
        "lemonade",
        ("4 lemons", "1/2 cup sugar", "4 cups cold water", "ice"),
        (
            "Squeeze the juice from the lemons.",
            "Stir the sugar into one cup of warm water until it dissolves.",
            "Mix the lemon juice, the sugar water and the cold water in a jug.",
            "Taste and add more sugar or lemon if needed.",
            "Serve over ice.",
        ),
        "A few mint leaves make it extra fresh.",
    ),
)

RECIPE_INSTRUCTIONS = (
    "Give me a simple recipe for {dish}.",
    "How do I make {dish}?",
    "Write step-by-step instructions for making {dish}.",
    "Share an easy {dish} recipe for beginners.",
    "What do I need to make {dish}, and how do I do it?",
)

RECIPE_INTROS = (
    "Here is a simple recipe for {dish}.",
    "Sure! Here is an easy way to make {dish}.",
    "{Dish} is quick to make at home.",
    "This recipe makes enough {dish} for two to four people.",
)

CODE_TASKS = (
    (
        "returns the sum of a list of numbers",
        """\
def total(numbers):
    result = 0
    for number in numbers:
        result += number
    return result""",
        "The function starts at zero and adds each number in turn. "
        "Python also has the built-in sum() for this.",
    ),
    (
        "checks whether a string is a palindrome",
        """\
def is_palindrome(text):
    cleaned = text.lower().replace(' ', '')
    return cleaned == cleaned[::-1]""",
        "It lowercases the text, removes spaces and compares it with its reverse.",
    ),
    (
        "counts the vowels in a string",
        """\
def count_vowels(text):
    return sum(1 for char in text.lower() if char in 'aeiou')""",
        "Each character is lowercased and counted when it is one of the five vowels.",
    ),
    (
        "returns the factorial of a number",
        """\
def factorial(n):
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result""",
        "The loop multiplies all the numbers from 2 up to n. The factorial of 0 and 1 is 1.",
    ),
    (
        "checks whether a number is prime",
        """\
def is_prime(n):
    if n < 2:
        return False
    for i in range(2, int(n ** 0.5) + 1):
        if n % i == 0:
            return False
    return True""",
        "It only tests divisors up to the square root of n, which is enough to find any factor.",
    ),
    (
        "returns the first n Fibonacci numbers",
        """\
def fibonacci(n):
    numbers = []
    a, b = 0, 1
    for _ in range(n):
        numbers.append(a)
        a, b = b, a + b
    return numbers""",
        "Two variables hold the last two numbers, and each step moves them one place forward.",
    ),
    (
        "converts a temperature from Celsius to Fahrenheit",
        """\
def celsius_to_fahrenheit(celsius):
    return celsius * 9 / 5 + 32""",
        "Multiply by nine fifths and add 32. For example, 100 degrees Celsius is 212 degrees Fahrenheit.",
    ),
    (
        "removes duplicates from a list but keeps the order",
        """\
def unique(items):
    seen = set()
    result = []
    for item in items:
        if item not in seen:
            seen.add(item)
            result.append(item)
    return result""",
        "A set remembers what has been seen, and the list keeps the first copy of each item in order.",
    ),
    (
        "counts how often each word appears in a text",
        """\
def word_counts(text):
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts""",
        "The text is split on spaces, and a dictionary keeps a count for every word.",
    ),
    (
        "finds the largest number in a list",
        """\
def largest(numbers):
    best = numbers[0]
    for number in numbers[1:]:
        if number > best:
            best = number
    return best""",
        "It keeps the biggest number seen so far. "
        "The list must not be empty; the built-in max() does the same.",
    ),
    (
        "reverses the order of the words in a sentence",
        """\
def reverse_words(sentence):
    return ' '.join(reversed(sentence.split()))""",
        "The sentence is split into words, the list is reversed and the words are joined again with spaces.",
    ),
    (
        "prints FizzBuzz for the numbers from 1 to n",
        """\
def fizzbuzz(n):
    for i in range(1, n + 1):
        if i % 15 == 0:
            print('FizzBuzz')
        elif i % 3 == 0:
            print('Fizz')
        elif i % 5 == 0:
            print('Buzz')
        else:
            print(i)""",
        "Multiples of both 3 and 5 are checked first, so they print FizzBuzz instead of only Fizz.",
    ),
    (
        "flattens a list of lists into one list",
        """\
def flatten(lists):
    return [item for inner in lists for item in inner]""",
        "The list comprehension walks through every inner list and collects its items in order.",
    ),
    (
        "counts the lines in a text file",
        """\
def count_lines(path):
    with open(path, encoding='utf-8') as file:
        return sum(1 for _ in file)""",
        "The with statement closes the file afterwards, and reading line by line keeps memory use small.",
    ),
    (
        "merges two dictionaries into a new one",
        """\
def merge(first, second):
    result = dict(first)
    result.update(second)
    return result""",
        "Keys from the second dictionary win when both have the same key. The originals are not changed.",
    ),
    (
        "sorts a list of people by age",
        """\
def sort_by_age(people):
    return sorted(people, key=lambda person: person['age'])""",
        "Each person is a dictionary with an 'age' key; sorted() returns a new list from youngest to oldest.",
    ),
)

CODE_INTROS = (
    "Here is a Python function that {task}:",
    "Sure! This function {task}:",
    "You can do it like this:",
)

CLOSINGS = ("", "", " I hope this helps!", " Let me know if you would like more detail.")

CODE_INSTRUCTIONS = (
    "Write a Python function that {task}.",
    "Can you show me a Python function that {task}?",
    "I need a short Python function that {task}.",
    "Write Python code for a function that {task}, and explain it briefly.",
)

SUMMARY_TOPICS = (
    (
        (
            "Honeybees live in colonies that can hold tens of thousands of insects.",
            "Each colony has one queen, who lays all of the eggs.",
            "Worker bees collect nectar and pollen, clean the hive and care for the young.",
            "By moving pollen from flower to flower, bees help many crops grow.",
            "In recent years, disease and the loss of wild flowers have made many colonies weaker.",
        ),
        "Honeybees live in large colonies run around a single queen, and their work pollinating flowers "
        "is important for crops, but disease and habitat loss are weakening them.",
    ),
    (
        (
            "The printing press was developed in Europe in the fifteenth century.",
            "Before it, books were copied by hand, which was slow and expensive.",
            "Printed books were cheaper, so more people could buy them and learn to read.",
            "Ideas spread faster than ever before, from science to religion.",
            "Many historians call it one of the most important inventions of all time.",
        ),
        "The printing press, developed in fifteenth-century Europe, made books cheap and fast to produce, "
        "which spread reading and new ideas widely and changed history.",
    ),
    (
        (
            "Regular exercise is good for the heart and the lungs.",
            "It also helps people sleep better and feel less stressed.",
            "Doctors often recommend about 150 minutes of moderate activity each week.",
            "Walking, cycling and swimming all count.",
            "Even short walks during the day are better than no activity at all.",
        ),
        "Regular, moderate exercise such as walking, cycling or swimming for about 150 minutes a week is "
        "good for the heart and lungs and improves sleep and mood.",
    ),
    (
        (
            "The town library opened a new reading room last month.",
            "The room has large windows, comfortable chairs and free wifi.",
            "It is open every day until nine in the evening.",
            "Children's story hour now takes place there on Saturday mornings.",
            "The library hopes the room will bring in more young readers.",
        ),
        "The town library has opened a bright new reading room, open late every day, and hopes it will "
        "attract more young readers.",
    ),
    (
        (
            "Volcanoes form where melted rock from deep inside the Earth reaches the surface.",
            "Many of them lie along the edges of the large plates that make up the Earth's crust.",
            "An eruption can throw out ash, gas and lava.",
            "The ash can make soil very fertile, so farmers often live nearby.",
            "Scientists watch active volcanoes closely to warn people before an eruption.",
        ),
        "Volcanoes form where molten rock reaches the surface, mostly at plate edges; they are dangerous but "
        "leave fertile soil, so scientists monitor them.",
    ),
    (
        (
            "Sleep gives the body and the brain time to recover.",
            "Most adults need between seven and nine hours each night.",
            "Too little sleep can make it hard to focus and can weaken the immune system.",
            "Screens late at night can make it harder to fall asleep.",
            "Going to bed at the same time every day helps many people sleep better.",
        ),
        "Adults need seven to nine hours of sleep to recover and stay healthy, and a regular bedtime with "
        "less screen time helps.",
    ),
    (
        (
            "Our company will move to a new office on the first of June.",
            "The new building is closer to the train station.",
            "Every team will have its own meeting room.",
            "Staff should pack their desks by the end of May.",
            "Movers will take care of the furniture and the computers.",
        ),
        "The company moves to a new office near the train station on June 1, and staff must pack their desks "
        "by the end of May.",
    ),
    (
        (
            "The Moon is about 384,000 kilometres from the Earth.",
            "It takes about 27 days to go around the Earth once.",
            "The Moon has no light of its own; it reflects light from the Sun.",
            "Its pull on the oceans causes the tides.",
            "Twelve people walked on the Moon between 1969 and 1972.",
        ),
        "The Moon circles the Earth about every 27 days, shines with reflected sunlight, causes the tides "
        "and was visited by twelve people.",
    ),
)

SUMMARY_TOPICS += (
    (
        (
            "The city will close Main Street to cars every Sunday this summer.",
            "Shops and cafes may put tables on the road.",
            "Buses will take the river road instead.",
            "The mayor hopes the plan will bring more people to the centre.",
            "Some shop owners worry that fewer drivers will stop to buy things.",
        ),
        "Main Street will be car-free on summer Sundays to bring people to the centre, although some shop "
        "owners fear it will cost them customers.",
    ),
    (
        (
            "Octopuses are some of the smartest animals in the sea.",
            "They can open jars, solve simple puzzles and escape from tanks.",
            "Each of their eight arms can taste and feel what it touches.",
            "They change the colour of their skin to hide or to signal.",
            "Most octopuses live for only one or two years.",
        ),
        "Octopuses are clever sea animals that solve puzzles, sense the world through their arms and change "
        "colour, though most live only a year or two.",
    ),
    (
        (
            "Drinking enough water helps the body control its temperature.",
            "It also keeps the joints moving smoothly and helps digestion.",
            "Most people get part of their water from food such as fruit and soup.",
            "Thirst is usually a good guide to how much to drink.",
            "People need more water on hot days and during exercise.",
        ),
        "Water keeps the body cool, the joints moving and digestion working; thirst is a good guide, and "
        "more is needed in heat and exercise.",
    ),
    (
        (
            "Our football club is looking for volunteers for the spring season.",
            "Volunteers help with training, match days and the snack stand.",
            "No experience is needed, and training is provided.",
            "Even two hours a month makes a big difference.",
            "Anyone interested can sign up at the clubhouse or on the website.",
        ),
        "The football club needs volunteers for training, match days and the snack stand this spring; no "
        "experience is needed and a few hours a month help.",
    ),
)

SUMMARY_INSTRUCTIONS = (
    "Summarize the following text.",
    "Give a one-sentence summary of this paragraph.",
    "What is the main idea of the text below?",
    "Summarize this in a single sentence.",
)

LIST_TOPICS = (
    (
        "tips for better sleep",
        (
            "Go to bed at the same time every night, even on weekends.",
            "Keep your bedroom cool, dark and quiet.",
            "Avoid coffee and tea in the late afternoon.",
            "Put your phone away an hour before bed.",
            "Get some daylight and exercise during the day.",
            "Avoid heavy meals just before sleeping.",
        ),
    ),
    (
        "ways to save energy at home",
        (
            "Turn off lights when you leave a room.",
            "Switch to LED light bulbs.",
            "Wash clothes in cold water.",
            "Unplug chargers and devices you are not using.",
            "Close curtains at night to keep the heat in.",
            "Lower the heating by one degree.",
        ),
    ),
    (
        "easy houseplants for beginners",
        (
            "Snake plant, which needs very little water.",
            "Pothos, which grows quickly and forgives mistakes.",
            "Spider plant, which is safe for pets.",
            "ZZ plant, which is happy in low light.",
            "Peace lily, which droops when it needs water.",
            "Aloe vera, which likes a sunny window.",
        ),
    ),
    (
        "things to pack for a camping trip",
        (
            "A tent with its poles and pegs.",
            "A warm sleeping bag and a sleeping mat.",
            "A flashlight or head lamp with spare batteries.",
            "Enough water and easy food.",
            "A small first aid kit.",
            "A rain jacket and warm layers.",
        ),
    ),
    (
        "benefits of learning a second language",
        (
            "It makes travel easier and more fun.",
            "It can open up new job opportunities.",
            "It helps you understand other cultures.",
            "It trains your memory and attention.",
            "It lets you enjoy books and films in the original.",
            "It helps you understand your own language better.",
        ),
    ),
    (
        "ways to stay focused while studying",
        (
            "Study in short blocks with small breaks in between.",
            "Keep your phone in another room.",
            "Set one clear goal for each session.",
            "Work at a clean, quiet desk.",
            "Drink water and eat a healthy snack.",
            "Explain what you learned to someone else.",
        ),
    ),
    (
        "fruits that are rich in vitamin C",
        (
            "Oranges, the classic choice.",
            "Kiwis, which have even more vitamin C than oranges.",
            "Strawberries, which are easy to add to breakfast.",
            "Guavas, one of the richest sources.",
            "Papayas, which are also high in fibre.",
            "Lemons, which work well in drinks and dressings.",
        ),
    ),
    (
        "ideas for a rainy afternoon",
        (
            "Bake a batch of cookies.",
            "Start a jigsaw puzzle.",
            "Read a book you have been saving.",
            "Watch an old favourite film.",
            "Write a letter to a friend.",
            "Try a new board game with family.",
        ),
    ),
)

LIST_INSTRUCTIONS = (
    "List {n} {topic}.",
    "Give me {n} {topic}.",
    "What are {n} {topic}?",
    "Make a numbered list of {n} {topic}.",
)

CONCEPTS = (
    (
        "photosynthesis",
        "Photosynthesis is how plants make their own food. They take in sunlight, water and carbon dioxide, "
        "and turn them into sugar. Oxygen is released as a by-product, which is the oxygen we breathe.",
    ),
    (
        "gravity",
        "Gravity is the force that pulls things toward each other. The Earth is very big, so its gravity "
        "pulls everything toward the ground. It also keeps the Moon going around the Earth and the Earth "
        "going around the Sun.",
    ),
    (
        "a budget",
        "A budget is a plan for your money. You write down how much money comes in and decide how much goes "
        "to rent, food, savings and fun. It helps you avoid spending more than you earn.",
    ),
    (
        "the water cycle",
        "The water cycle is the way water moves around the Earth. The Sun warms water so it evaporates, the "
        "vapour cools into clouds, and it falls again as rain or snow. Then it flows into rivers and seas "
        "and the cycle starts again.",
    ),
    (
        "a computer virus",
        "A computer virus is a harmful program that copies itself from one computer to another. It can "
        "delete files, steal information or slow a computer down. Updates and antivirus software help "
        "protect against it.",
    ),
    (
        "inflation",
        "Inflation means that prices go up over time, so the same money buys less. A little inflation is "
        "normal, but when prices rise very fast, people's savings lose value quickly.",
    ),
    (
        "an algorithm",
        "In programming, an algorithm is like a recipe: a list of clear steps that always leads to a result. "
        "A computer follows the steps exactly, in order, so every step must be precise.",
    ),
    (
        "the immune system",
        "The immune system is the body's defence team. White blood cells find germs such as bacteria and "
        "viruses and destroy them. After an infection or a vaccine, the body remembers the germ and can "
        "fight it faster next time.",
    ),
    (
        "a black hole",
        "A black hole is a place in space where gravity is so strong that nothing, not even light, can "
        "escape. Many form when a very large star runs out of fuel and collapses into a tiny point.",
    ),
    (
        "compound interest",
        "Compound interest is interest earned on interest. If you save money, the interest is added to your "
        "savings, and the next year you earn interest on the bigger amount. Over many years this makes "
        "savings grow faster and faster.",
    ),
)

CONCEPTS += (
    (
        "a rainbow",
        "A rainbow appears when sunlight shines through drops of rain. Each drop bends the light and splits "
        "it into its colours, from red on the outside to violet on the inside. You see one when the sun is "
        "behind you and the rain is in front of you.",
    ),
    (
        "recycling",
        "Recycling means turning used things, such as paper, glass, metal and some plastics, into new "
        "products. It saves raw materials and energy, and it keeps waste out of landfills.",
    ),
    (
        "a vaccine",
        "A vaccine teaches the immune system to recognise a germ without making you really sick. It contains "
        "a weak or harmless part of the germ, so the body learns to fight it and is ready if the real germ "
        "comes along.",
    ),
    (
        "the internet",
        "The internet is a huge network that connects computers all over the world. When you open a website, "
        "your computer asks another computer, called a server, for the page, and the data travels in small "
        "packets through many connections.",
    ),
    (
        "a food chain",
        "A food chain shows who eats whom in nature. Plants make food from sunlight, small animals eat the "
        "plants, and bigger animals eat the small ones. If one link disappears, the whole chain is affected.",
    ),
)

CONCEPT_INSTRUCTIONS = (
    "Explain {concept} in simple terms.",
    "What is {concept}?",
    "Describe {concept} to a ten-year-old.",
    "Give a short explanation of {concept}.",
)

ANIMALS = (
    (
        "dolphin",
        "mammal",
        "It lives in the water but breathes air, is warm-blooded and feeds its young with milk.",
    ),
    ("penguin", "bird", "It cannot fly, but it has feathers and a beak and lays eggs."),
    ("salmon", "fish", "It breathes through gills, has fins and scales and lays its eggs in rivers."),
    ("crocodile", "reptile", "It has scaly skin, is cold-blooded and lays eggs with hard shells on land."),
    ("bat", "mammal", "It can fly, but it has fur and feeds its young with milk."),
    ("frog", "amphibian", "It starts life in water as a tadpole with gills and later breathes air on land."),
    ("shark", "fish", "It breathes through gills and has a skeleton made of cartilage instead of bone."),
    ("owl", "bird", "It has feathers, wings and a beak, and it hunts at night with its sharp eyes."),
    ("whale", "mammal", "It breathes air through a blowhole and feeds its calves with milk."),
    ("turtle", "reptile", "It has a shell and scaly skin, and it lays its eggs on land."),
)

ANIMALS += (
    ("eagle", "bird", "It has feathers, a hooked beak and strong claws, and it lays eggs in a large nest."),
    ("snake", "reptile", "It has dry scaly skin, is cold-blooded and most kinds lay eggs."),
    ("salamander", "amphibian", "It has moist skin and lays its eggs in water, where the young grow up."),
    ("kangaroo", "mammal", "It has fur and carries its baby in a pouch, where it drinks its mother's milk."),
    ("tuna", "fish", "It lives its whole life in the sea and breathes through gills."),
    (
        "ostrich",
        "bird",
        "It cannot fly, but it has feathers and wings and lays the largest eggs of any bird.",
    ),
)

EMAILS = (
    (
        "my manager asking for a day off next Friday",
        "Request for a day off",
        "I would like to ask for a day off next Friday, the 14th. My tasks for that week will be finished "
        "by Thursday, and Maria has agreed to answer my emails while I am away.",
    ),
    (
        "my neighbours about a party I am having on Saturday",
        "Party on Saturday",
        "I am having a small birthday party this Saturday evening. There may be some music until about "
        "eleven. If the noise bothers you, please knock on my door. You are also very welcome to join us!",
    ),
    (
        "my child's teacher explaining why she missed school yesterday",
        "Absence yesterday",
        "My daughter missed school yesterday because she had a fever. She is feeling better and will be back "
        "tomorrow. Could you let me know what homework she needs to catch up on?",
    ),
    (
        "a customer saying their order will arrive two days late",
        "Your order",
        "Thank you for your order. Unfortunately, it will arrive two days later than planned because of a "
        "delay at our warehouse. We are sorry for the trouble and have refunded your shipping costs.",
    ),
    (
        "a friend inviting them to dinner next week",
        "Dinner next week?",
        "It has been far too long since we last met! Would you like to come over for dinner next Thursday "
        "around seven? I am making lasagne. Let me know if you can make it.",
    ),
    (
        "my landlord about a broken heater in the flat",
        "Broken heater",
        "The heater in the living room stopped working on Monday, and the flat is getting very cold. Could "
        "you send someone to repair it this week? I am at home most mornings.",
    ),
)


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
