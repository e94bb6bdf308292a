"""The quality filters: each one's keep and drop with its reason, switching off, params validation."""

import copy
import io
import json
import re

import pytest
from conftest import DEFAULT_PARAMS

import chatmill.clean as clean
from chatmill.errors import ChatmillError
from chatmill.filters import (
    ExactDuplicate,
    Language,
    LoopingBot,
    MessageTooLong,
    NoBotTurn,
    Zalgo,
    build_quality_filters,
    lower_words,
)
from chatmill.stats import StageStats

DEFAULT_FILTERS = DEFAULT_PARAMS["clean"]["filters"]
LONG_REPLIES = [
    "The old lighthouse keeper pours you a cup of tea and points at the storm outside the window.",
    "She tells you about the shipwreck of eighteen ninety, when the lamp went dark for a whole night.",
    "Somewhere below, the waves hammer the rocks while the kettle starts to whistle again on the stove.",
    "*laughs* Nobody has climbed those stairs since my brother left for the city to become a painter.",
]


def conversation(*bot_replies: str, user: str = "Tell me more.", persona: str = "", cid: str = "c1") -> dict:
    turns = []
    for reply in bot_replies:
        turns += [
            {"role": "user", "name": "You", "text": user},
            {"role": "bot", "name": "Mira", "text": reply},
        ]
    return {
        "id": cid,
        "source": "logs",
        "bot_name": "Mira",
        "persona": persona,
        "scenario": "",
        "turns": turns,
        "meta": "{}",
    }


# ---------------------------------------------------------------- each filter


def test_no_bot_turn():
    assert NoBotTurn().keep(conversation("Hello."))
    only_user = conversation()
    only_user["turns"] = [{"role": "user", "name": "You", "text": "Anyone?"}]
    assert not NoBotTurn().keep(only_user)
    assert NoBotTurn.name == "no_bot_turn"


def test_message_too_long_counts_characters_of_every_turn():
    keep = MessageTooLong(max_chars=10)
    assert keep.keep(conversation("0123456789", user="short"))
    assert not keep.keep(conversation("0123456789!"))
    assert not keep.keep(conversation("ok", user="a user turn over ten characters"))
    assert MessageTooLong.name == "message_too_long"


ZALGO = "H\u0335\u0311\u0352\u0300\u0347e\u0336\u0304\u0301\u0358\u0324 comes"


@pytest.mark.parametrize(
    "text",
    [
        "Caf\u00e9, na\u00efve, \u00e0 bient\u00f4t",
        "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u",  # Vietnamese, NFC
        "e\u0301\u0302\u0303\u0304",  # four stacked marks: the limit, not over it
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e\u0901",  # Hindi
        "\u0628\u0650\u0633\u0652\u0645\u0650 \u0627\u0644\u0644\u0651\u064e\u0647\u0650",  # Arabic, harakat
        "\u05d1\u05bc\u05b0\u05e8\u05b5\u05d0\u05e9\u05b4\u05c1\u05d9\u05ea",  # Hebrew with points
        "\u0e01\u0e34\u0e48\u0e07 \u0e19\u0e49\u0e33",  # Thai vowel and tone marks
        "\U0001f469\u200d\U0001f4bb \u2764\ufe0f",  # emoji sequences
    ],
)
def test_zalgo_keeps_ordinary_diacritics_of_every_script(text):
    assert Zalgo(max_combining_marks=4).keep(conversation(text))


def test_zalgo_drops_stacked_diacritics_in_any_text_field():
    keep = Zalgo(max_combining_marks=4)
    assert not keep.keep(conversation(ZALGO))
    assert not keep.keep(conversation("Hello.", user=ZALGO))
    assert not keep.keep(conversation("Hello.", persona="She is " + ZALGO))
    assert not keep.keep(conversation("e\u0301\u0302\u0303\u0304\u0305"))  # five on one letter
    assert Zalgo(max_combining_marks=5).keep(conversation("e\u0301\u0302\u0303\u0304\u0305"))
    assert Zalgo.name == "zalgo"


def looping() -> LoopingBot:
    return LoopingBot(min_words=5, min_replies=3, similarity=0.8, max_repeated_share=0.5)


def test_looping_bot_drops_a_bot_that_repeats_its_replies():
    stuck = "I am sorry, I cannot help you with that request right now."
    assert not looping().keep(conversation(LONG_REPLIES[0], stuck, stuck, stuck))
    # near repeats count too: one word changed in a reply of 25
    long_stuck = (
        "I am sorry, but I cannot help you with that request right now, because the library is closed "
    )
    long_stuck += "until the morning bell."
    near = long_stuck.replace("sorry", "afraid")
    assert not looping().keep(conversation(long_stuck, near, long_stuck + "!", LONG_REPLIES[1]))
    assert LoopingBot.name == "looping_bot"


def test_looping_bot_keeps_varied_replies_and_leaves_short_ones_to_length_trim():
    assert looping().keep(conversation(*LONG_REPLIES))
    assert looping().keep(conversation("...", "Yes.", "...", "...", "Hm?", "..."))
    # one reply and its copy among four replies is a share of 0.5: not over the limit
    assert looping().keep(conversation(LONG_REPLIES[0], LONG_REPLIES[0], LONG_REPLIES[1], LONG_REPLIES[2]))
    # a copy further back than LOOKBACK replies is not a loop
    far = [LONG_REPLIES[0], *(f"Reply number {i} is about something else entirely." for i in range(9))]
    assert looping().keep(conversation(*far, LONG_REPLIES[0]))
    # fewer than min_replies long replies are never a loop
    assert looping().keep(conversation(LONG_REPLIES[0], LONG_REPLIES[0], "...", "..."))


def test_exact_duplicate_keeps_the_first_copy_only():
    keep = ExactDuplicate()
    assert keep.keep(conversation("Hi.", cid="a"))
    assert keep.keep(conversation("Hi.", cid="b"))
    assert not keep.keep(conversation("Hi.", cid="a"))
    assert ExactDuplicate.name == "duplicate"


GERMAN_REPLIES = [
    "Der alte Leuchtturmwärter schenkt dir eine Tasse Tee ein und zeigt auf den Sturm vor dem Fenster.",
    "Sie erzählt dir vom Schiffbruch, als die Lampe eine ganze Nacht lang dunkel blieb.",
]
SPANISH_REPLIES = [
    "El viejo farero te sirve una taza de té y señala la tormenta que ruge al otro lado de la ventana.",
    "Te cuenta el naufragio de mil ochocientos noventa, cuando la lámpara se apagó durante toda una noche.",
]
LANGUAGE = DEFAULT_FILTERS["language"] | {"enabled": True}


def test_language_keeps_the_chosen_languages_and_drops_others():
    english_only = Language(**{k: v for k, v in LANGUAGE.items() if k != "enabled"})
    assert english_only.keep(conversation(*LONG_REPLIES))
    assert not english_only.keep(conversation(*GERMAN_REPLIES, user="Erzähl mir mehr."))
    assert not english_only.keep(conversation(*SPANISH_REPLIES, user="Cuéntame más."))
    german_too = Language(languages=["en", "de"], min_probability=0.9, sample_chars=1000)
    assert german_too.keep(conversation(*GERMAN_REPLIES, user="Erzähl mir mehr."))
    assert not german_too.keep(conversation(*SPANISH_REPLIES, user="Cuéntame más."))


def test_language_keeps_text_too_short_to_tell():
    english_only = Language(languages=["en"], min_probability=0.9, sample_chars=1000)
    for reply in ("Hm?", "*nods*", "...", "Mira!", "\U0001f600"):
        assert english_only.keep(conversation(reply, user="?"))


def test_language_reads_only_the_first_sample_chars():
    # An English opening decides, however much Spanish follows it.
    mixed = conversation(*LONG_REPLIES, *SPANISH_REPLIES * 20)
    assert Language(languages=["en"], min_probability=0.9, sample_chars=300).keep(mixed)
    assert not Language(languages=["en"], min_probability=0.9, sample_chars=100_000).keep(mixed)


# ---------------------------------------------------------------- params


def test_defaults_build_every_filter_but_language_cheapest_first():
    assert [f.name for f in build_quality_filters(DEFAULT_FILTERS)] == [
        "no_bot_turn",
        "message_too_long",
        "zalgo",
        "looping_bot",
    ]
    with_language = build_quality_filters(DEFAULT_FILTERS | {"language": LANGUAGE})
    assert [f.name for f in with_language][-1] == "language"


def test_a_switched_off_filter_drops_nothing():
    section = DEFAULT_FILTERS | {"zalgo": {"enabled": False, "max_combining_marks": 4}}
    filters = build_quality_filters(section)
    assert "zalgo" not in [f.name for f in filters]
    assert clean.drop_reason(conversation(ZALGO), filters) is None
    assert clean.drop_reason(conversation(ZALGO), build_quality_filters(DEFAULT_FILTERS)) == "zalgo"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"zalgoo": {"enabled": True}},
            r"^params\.yaml: clean\.filters has unknown zalgoo; known: no_bot_turn, ",
        ),
        (
            {"zalgo": {"enabled": True, "max_marks": 4}},
            r"^params\.yaml: clean\.filters\.zalgo has unknown max_marks; known: enabled, max_comb",
        ),
        ({"zalgo": {"max_combining_marks": 4}}, r"^params\.yaml: clean\.filters\.zalgo\.enabled is missing$"),
        (
            {"zalgo": {"enabled": True}},
            r"^params\.yaml: clean\.filters\.zalgo\.max_combining_marks is missing$",
        ),
        ({"zalgo": True}, r"^params\.yaml: clean\.filters\.zalgo must be a mapping, got True$"),
        (
            {"message_too_long": {"enabled": True, "max_chars": "lots"}},
            r"^params\.yaml: clean\.filters\.message_too_long\.max_chars must be int, got 'lots'$",
        ),
        (
            {"message_too_long": {"enabled": True, "max_chars": 0}},
            r"^params\.yaml: clean\.filters\.message_too_long\.max_chars must be in \[1, inf\], got 0$",
        ),
        (
            {"looping_bot": DEFAULT_FILTERS["looping_bot"] | {"similarity": 1.5}},
            r"^params\.yaml: clean\.filters\.looping_bot\.similarity must be in \[0\.0, 1\.0\], got 1\.5$",
        ),
        (
            {"language": LANGUAGE | {"languages": ["en", "klingon"]}},
            r"^params\.yaml: clean\.filters\.language\.languages has unknown klingon; use ISO 639-1 codes",
        ),
        (
            {"language": LANGUAGE | {"languages": []}},
            r"^params\.yaml: clean\.filters\.language\.languages must hold 1 to inf items, got \[\]$",
        ),
        (
            {"language": LANGUAGE | {"languages": "en"}},
            r"^params\.yaml: clean\.filters\.language\.languages must be list, got 'en'$",
        ),
        (
            {"no_bot_turn": {"enabled": "yes"}},
            r"^params\.yaml: clean\.filters\.no_bot_turn\.enabled must be bool, got 'yes'$",
        ),
    ],
)
def test_bad_params_are_one_line_errors_naming_the_key(change, message):
    with pytest.raises(ChatmillError, match=message) as error:
        build_quality_filters(DEFAULT_FILTERS | change)
    assert "\n" not in str(error.value)


def test_a_missing_filter_section_says_how_to_switch_it_off():
    section = {k: v for k, v in DEFAULT_FILTERS.items() if k != "looping_bot"}
    with pytest.raises(ChatmillError, match=r"clean\.filters\.looping_bot is missing \(set enabled: false"):
        build_quality_filters(section)


# ---------------------------------------------------------------- in the stage


def test_each_filter_drops_under_its_own_reason_and_stats_reconcile(tmp_path):
    stuck = "I am sorry, I cannot help you with that request right now."
    records = [
        {"conversations": [{"from": "human", "value": "Hello?"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x" * 20001}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ZALGO}]},
        {
            "conversations": [
                m
                for _ in range(3)
                for m in ({"from": "human", "value": "?"}, {"from": "gpt", "value": stuck})
            ]
        },
        {"conversations": [{"from": "human", "value": "Hallo"}, {"from": "gpt", "value": GERMAN_REPLIES[1]}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": LONG_REPLIES[0]}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": LONG_REPLIES[0]}]},
    ]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    params = copy.deepcopy(DEFAULT_PARAMS["clean"])
    params["filters"]["language"]["enabled"] = True
    scrubber, filters = clean.build_filters(params)
    stats = StageStats()
    kept = list(
        clean.clean_sources(
            {"logs": "sharegpt"},
            {"logs": {"file": "logs/logs.jsonl"}},
            tmp_path,
            io.StringIO(),
            stats,
            scrubber,
            filters,
        )
    )
    assert len(kept) == 1
    assert dict(stats.dropped) == {
        "no_bot_turn": 1,
        "message_too_long": 1,
        "zalgo": 1,
        "looping_bot": 1,
        "language": 1,
        "duplicate": 1,
    }
    assert stats.records_in == len(records) == 7
    assert stats.records_in == stats.records_out + sum(stats.dropped.values()) + stats.quarantined
    assert stats.extra["sources"]["logs"]["dropped_zalgo"] == 1


@pytest.mark.parametrize(
    "text",
    [
        "Hello, THERE_you 42 don't-stop\tnow\n\x1f...",
        "Café NAÏVE 東京 ２３ x²",
        "\u212a is a Kelvin sign that lower-cases to ASCII",
        "İstanbul",
        "",
    ],
)
def test_lower_words_are_the_unicode_regex_words_of_the_lower_cased_text(text):
    assert lower_words(text) == re.findall(r"\w+", text.lower())
