"""Record formats (pippa, sharegpt, openai, alpaca): chatmill.records. What one decoded record means,
as the parts of a canonical conversation, or a RecordError with the quarantine reason."""

import pytest

from chatmill.errors import ChatmillError
from chatmill.records import (
    ASSISTANT_NAME,
    ASSISTANT_PERSONA,
    FORMATS,
    RecordError,
    parse_alpaca,
    parse_openai,
    parse_pippa,
    parse_sharegpt,
    parser_for,
)
from chatmill.schema import USER_NAME

# ---------------------------------------------------------------- pippa


PIPPA = {
    "bot_id": "OLIhiJ7Xqv9CKccOJUIkq1Zp6DpCU2uoRyWDMJlZBak",
    "bot_name": "Aqua",
    "bot_definitions": "{{char}} is a goddess.",
    "bot_description": "A water goddess.",
    "bot_greeting": "Hello, {{user}}!",
    "categories": ["Anime"],
    "submission_timestamp": None,
    "conversation": [
        {"message": "Hello, {{user}}!", "is_human": False},
        {"message": "Hi!", "is_human": True},
        {"message": "*splashes*", "is_human": False},
    ],
}


def test_parse_pippa():
    parsed = parse_pippa(PIPPA)
    assert (parsed.bot_name, parsed.persona, parsed.scenario) == ("Aqua", "A water goddess.", "")
    assert parsed.turns == [
        {"role": "bot", "name": "Aqua", "text": "Hello, {{user}}!"},
        {"role": "user", "name": USER_NAME, "text": "Hi!"},
        {"role": "bot", "name": "Aqua", "text": "*splashes*"},
    ]
    # None values are left out of meta; bot_id names the character (PIPPA has no id per conversation)
    assert parsed.meta == {
        "bot_id": "OLIhiJ7Xqv9CKccOJUIkq1Zp6DpCU2uoRyWDMJlZBak",
        "bot_definitions": "{{char}} is a goddess.",
        "bot_greeting": "Hello, {{user}}!",
        "categories": ["Anime"],
    }


def test_parse_pippa_without_description_has_an_empty_persona():
    parsed = parse_pippa({"bot_name": "Aqua", "conversation": []})
    assert (parsed.persona, parsed.turns, parsed.meta) == ("", [], {})


# ---------------------------------------------------------------- sharegpt and openai


def test_parse_sharegpt_leading_system_message_becomes_the_persona():
    parsed = parse_sharegpt(
        {
            "id": "abc",
            "conversations": [
                {"from": "system", "value": "You are terse."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello."},
                {"from": "system", "value": "Be nicer."},
                {"from": "user", "value": "Again"},
                {"from": "assistant", "value": "Hello, friend!"},
            ],
        }
    )
    assert (parsed.bot_name, parsed.persona, parsed.scenario) == (ASSISTANT_NAME, "You are terse.", "")
    assert [(t["role"], t["name"], t["text"]) for t in parsed.turns] == [
        ("user", USER_NAME, "Hi"),
        ("bot", ASSISTANT_NAME, "Hello."),
        ("system", "system", "Be nicer."),  # only a leading system message is the persona
        ("user", USER_NAME, "Again"),
        ("bot", ASSISTANT_NAME, "Hello, friend!"),
    ]
    assert parsed.meta == {"origin_id": "abc"}


def test_parse_sharegpt_record_level_bot_name_persona_and_scenario():
    parsed = parse_sharegpt(
        {
            "bot_name": "Rin",
            "persona": "A shy librarian.",
            "scenario": "A library.",
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "chatgpt", "value": "...hello."},
            ],
        }
    )
    assert (parsed.bot_name, parsed.persona, parsed.scenario) == ("Rin", "A shy librarian.", "A library.")
    assert [(t["role"], t["name"]) for t in parsed.turns] == [("user", USER_NAME), ("bot", "Rin")]
    assert parsed.meta == {}


def test_parse_openai():
    parsed = parse_openai(
        {
            "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Bonjour"},
            ]
        }
    )
    assert (parsed.bot_name, parsed.persona) == (ASSISTANT_NAME, "Answer in French.")
    assert parsed.turns == [
        {"role": "user", "name": USER_NAME, "text": "Hello"},
        {"role": "bot", "name": ASSISTANT_NAME, "text": "Bonjour"},
    ]


# ---------------------------------------------------------------- alpaca


def test_parse_alpaca_joins_the_input_into_the_user_turn():
    parsed = parse_alpaca({"instruction": "Translate to French.", "input": "Good day", "output": "Bonjour"})
    assert (parsed.bot_name, parsed.persona, parsed.scenario) == (ASSISTANT_NAME, ASSISTANT_PERSONA, "")
    assert parsed.turns == [
        {"role": "user", "name": USER_NAME, "text": "Translate to French.\n\nGood day"},
        {"role": "bot", "name": ASSISTANT_NAME, "text": "Bonjour"},
    ]


@pytest.mark.parametrize(
    "record",
    [
        {"instruction": "Name a colour.", "output": "Blue"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
        {"instruction": "Name a colour.", "input": " \n", "output": "Blue"},
        {"instruction": "Name a colour.", "input": None, "output": "Blue"},
    ],
)
def test_parse_alpaca_without_input_is_the_instruction_alone(record):
    assert parse_alpaca(record).turns[0]["text"] == "Name a colour."


# ---------------------------------------------------------------- the source's own id, in every format

ONE_OF_EACH = {
    "pippa": {"bot_name": "Aqua", "conversation": [{"message": "Hi!", "is_human": False}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    "openai": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    "alpaca": {"instruction": "Say hello.", "input": "", "output": "Hello."},
}


def test_one_record_of_each_format_is_known():
    assert set(ONE_OF_EACH) == set(FORMATS)


@pytest.mark.parametrize("format_name", list(ONE_OF_EACH))
@pytest.mark.parametrize(
    ("source_id", "meta"), [("conv-0042", {"origin_id": "conv-0042"}), (42, {"origin_id": 42})]
)
def test_every_format_keeps_the_records_own_id_as_origin_id(format_name, source_id, meta):
    parsed = FORMATS[format_name](ONE_OF_EACH[format_name] | {"id": source_id})
    assert parsed.meta == meta
    assert FORMATS[format_name](ONE_OF_EACH[format_name]).meta == {}


@pytest.mark.parametrize("format_name", list(ONE_OF_EACH))
@pytest.mark.parametrize("not_an_id", [None, "", True, 1.5, ["a"], {"n": 1}])
def test_an_id_that_is_not_a_string_or_integer_is_left_out(format_name, not_an_id):
    assert FORMATS[format_name](ONE_OF_EACH[format_name] | {"id": not_an_id}).meta == {}


# ---------------------------------------------------------------- bad records


def pippa_with(**changes):
    return {**PIPPA, **changes}


@pytest.mark.parametrize(
    ("parse", "record", "reason"),
    [
        (parse_pippa, [PIPPA], "record is list, expected an object"),
        (parse_pippa, None, "record is NoneType, expected an object"),
        (parse_pippa, {"conversation": []}, "missing field 'bot_name'"),
        (parse_pippa, {"bot_name": "Aqua"}, "missing field 'conversation'"),
        (parse_pippa, pippa_with(conversation="Hi"), "field 'conversation' is str, expected list"),
        (parse_pippa, pippa_with(bot_name=7), "field 'bot_name' is int, expected str"),
        (parse_pippa, pippa_with(bot_description=["x"]), "field 'bot_description' is list, expected str"),
        (parse_pippa, pippa_with(conversation=["Hi"]), "conversation[0] is str, expected an object"),
        (
            parse_pippa,
            pippa_with(conversation=[{"message": "Hi", "is_human": "yes"}]),
            "field 'conversation[0].is_human' is str, expected bool",
        ),
        (
            parse_pippa,
            pippa_with(conversation=[{"is_human": True}]),
            "missing field 'conversation[0].message'",
        ),
        (
            parse_pippa,
            pippa_with(conversation=[{"message": 3, "is_human": True}]),
            "field 'conversation[0].message' is int, expected str",
        ),
        (parse_sharegpt, "hello", "record is str, expected an object"),
        (parse_sharegpt, {"messages": []}, "missing field 'conversations'"),
        (
            parse_sharegpt,
            {"conversations": {"from": "human"}},
            "field 'conversations' is dict, expected list",
        ),
        (
            parse_sharegpt,
            {"conversations": [{"from": "human", "value": 1}]},
            "'messages[0].value' is int, expected str",
        ),
        (parse_sharegpt, {"conversations": [{"value": "hi"}]}, "missing field 'messages[0].from'"),
        (
            parse_sharegpt,
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "bard", "value": "yo"}]},
            "[1].from is 'bard', expected one of",
        ),
        (parse_openai, {"messages": None}, "missing field 'messages'"),
        (
            parse_openai,
            {"messages": [{"role": "tool", "content": "{}"}]},
            "[0].role is 'tool', expected one of",
        ),
        (
            parse_openai,
            {"messages": [{"role": "user", "content": ["a"]}]},
            "'messages[0].content' is list, expected str",
        ),
        (parse_alpaca, {"instruction": "Do it."}, "missing field 'output'"),
        (parse_alpaca, {"output": "Done."}, "missing field 'instruction'"),
        (
            parse_alpaca,
            {"instruction": ["Go"], "output": "Done."},
            "field 'instruction' is list, expected str",
        ),
        (
            parse_alpaca,
            {"instruction": "Go", "input": 5, "output": "Ok"},
            "field 'input' is int, expected str",
        ),
        (parse_alpaca, 42, "record is int, expected an object"),
        (parse_openai, {"messages": ["hi"]}, "messages[0] is str, expected an object"),
        (
            parse_openai,
            {"messages": [{"role": "user", "content": None}]},
            "missing field 'messages[0].content'",
        ),
        (
            parse_pippa,
            pippa_with(conversation=[PIPPA["conversation"][0], {"message": "Hi", "is_human": 1}]),
            "field 'conversation[1].is_human' is int, expected bool",
        ),
        (
            parse_openai,
            {"messages": [{"role": "x" * 1000, "content": "hi"}]},
            "messages[0].role is 'xxx",  # a long value is cut short: a reason is one short line
        ),
    ],
)
def test_bad_record_is_a_record_error_with_its_reason(parse, record, reason):
    with pytest.raises(RecordError) as error:
        parse(record)
    assert reason in str(error.value)
    assert len(str(error.value)) < 150 and "\n" not in str(error.value)


def test_unknown_sharegpt_role_names_the_accepted_roles():
    with pytest.raises(RecordError) as error:
        parse_sharegpt({"conversations": [{"from": "bard", "value": "yo"}]})
    assert all(role in str(error.value) for role in ("human", "gpt", "system"))


# ---------------------------------------------------------------- parser_for


@pytest.mark.parametrize(
    ("name", "parse"),
    [
        ("pippa", parse_pippa),
        ("sharegpt", parse_sharegpt),
        ("openai", parse_openai),
        ("alpaca", parse_alpaca),
    ],
)
def test_parser_for_known_formats(name, parse):
    assert parser_for(name, "logs") is parse
    assert FORMATS[name] is parse


def test_the_known_formats_are_these_four():
    assert list(FORMATS) == ["pippa", "sharegpt", "openai", "alpaca"]


def test_parser_for_unknown_format_names_the_params_key_and_the_known_formats():
    with pytest.raises(ChatmillError) as error:
        parser_for("chatml", "logs")
    message = str(error.value)
    assert "sources.logs.format" in message and "'chatml'" in message
    assert all(name in message for name in ("pippa", "sharegpt", "openai", "alpaca"))
    assert (
        message
        == "params.yaml: sources.logs.format is 'chatml'; known formats: pippa, sharegpt, openai, alpaca"
    )
