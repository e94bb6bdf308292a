"""The prompt formats at token level, each for each family of tokenizer real base models use (built
locally in conftest: GPT-2's byte-level BPE for GPT-J and GPT-NeoX, SentencePiece for Llama and
Mistral in both of its spellings, Qwen's byte-level BPE), prepared as base-model prepares them: the
segment-wise encoding decodes to exactly the text of the format, supervises exactly the replies and
their end-of-turn marker, gives generation the same tokens as training and a conversation the same
tokens alone as in a batch; and the chat template of every model folder renders a conversation to
exactly the token ids the shard stage trains on."""

import copy
import json
import re

import pytest
from conftest import TOKENIZER_FAMILIES, make_conversation, run_stage, write_workspace
from tokenizers import AddedToken
from transformers import AutoTokenizer

from chatmill.errors import ChatmillError
from chatmill.prompt import (
    FORMAT_KEY,
    FORMATS,
    encode_conversation,
    encode_conversations,
    encode_prompt,
    encode_texts,
    exact_backend,
    mid_text_backend,
    prepare_tokenizer,
    prompt_format,
    recorded_format,
    validate_format,
)

REPLIES = (
    "Of course.  Two silver a night.\n\n```python\ndef price(nights):\n    return 2 * nights\n```",
    "Yes.",
    " *She smiles.*   東京 🎉",
)
CONVERSATION = make_conversation("c1", bot_replies=REPLIES, user="Hi there!\n  Any rooms, 2 nights?")
CONVERSATION["scenario"] = "A stormy night."
CONVERSATION["turns"].insert(2, {"role": "system", "name": "", "text": "*Thunder rolls.*"})
# PIPPA's conversations open with the bot's greeting. (Texts of characters the SentencePiece vocabulary
# has: conftest's marks its byte-fallback tokens special, so they would not decode back.)
GREETING = make_conversation("c2", bot_replies=("Hm?",), user="Of course.  Two silver a night.")
GREETING["turns"].insert(0, {"role": "bot", "name": "Mira", "text": "Hello there, traveller!"})

# prompt.format: base renders with the base model's own template: one per family, of the kinds such
# bases ship (the special tokens they need added to the tokenizer, as the real ones have them).
ZEPHYR = (  # markers as plain text; the persona a system message
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
GEMMA = (  # refuses system messages and demands user/assistant alternation, starting with the user
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n'"
    " + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
    " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
QWEN2 = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BASE_TEMPLATES = {
    "gpt2-bpe": (ZEPHYR, ()),
    "sentencepiece-prepend": (GEMMA, ("<start_of_turn>", "<end_of_turn>")),
    "sentencepiece-metaspace": (LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "qwen": (QWEN2, ()),
}
# Llama 2's spelling of SentencePiece (a Prepend normalizer: transformers' legacy Llama tokenizer)
# puts its "▁" before the text after every special token when a whole text is tokenized, as
# apply_chat_template does; the pipeline encodes the text after a special token as text in the middle
# of a document (no "▁"), so that the tokens decode to exactly the text. For that spelling the
# template's text is the same, and its ids are those of the text with a space after each special
# token that text follows.
LEGACY_PREFIX = "sentencepiece-prepend"


def special_tokens(tokenizer) -> list[str]:
    return [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]


def with_legacy_spaces(tokenizer, text: str) -> str:
    specials = "|".join(
        re.escape(token) for token in sorted(special_tokens(tokenizer), key=len, reverse=True)
    )
    return re.sub(f"({specials})(?!{specials})(?=.)", r"\1 ", text, flags=re.DOTALL)


def with_template(family: str):
    tokenizer = TOKENIZER_FAMILIES[family]()
    template, specials = BASE_TEMPLATES[family]
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in specials], True)
    tokenizer.chat_template = template
    return tokenizer


def prepared(name: str, family: str):
    """The family's tokenizer as base-model leaves it for format `name`."""
    tokenizer = with_template(family) if name == "base" else TOKENIZER_FAMILIES[family]()
    prepare_tokenizer(tokenizer, name, "Assistant")
    return tokenizer


CASES = [(name, family) for name in FORMATS for family in sorted(TOKENIZER_FAMILIES)]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def case(request):
    name, family = request.param
    return name, family, prepared(name, family)


def flat(tokenizer, conversation):
    header, turns = encode_conversation(tokenizer, conversation)
    ids = header.ids + [token for turn in turns for token in turn.ids]
    supervised = header.supervised + [flag for turn in turns for flag in turn.supervised]
    return ids, supervised


def supervised_runs(supervised: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of each run of supervised tokens."""
    runs, start = [], None
    for index, flag in enumerate([*supervised, False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index))
            start = None
    return runs


def test_the_tokens_decode_to_exactly_the_text_of_the_format(case):
    _, _, tokenizer = case
    for conversation in (CONVERSATION, GREETING):
        ids, _ = flat(tokenizer, conversation)
        assert tokenizer.decode(ids) == prompt_format(tokenizer).render_text(conversation)


def test_the_supervised_tokens_are_each_reply_and_its_end_of_turn_marker(case):
    """Decoded in place (a SentencePiece decoder drops a leading space at the start of what it decodes)."""
    name, _, tokenizer = case
    form = prompt_format(tokenizer)
    ids, supervised = flat(tokenizer, CONVERSATION)
    end = tokenizer.convert_ids_to_tokens(form.stops.end_ids[0])
    replies = []
    for start, stop in supervised_runs(supervised):
        assert ids[stop - 1] == form.stops.end_ids[0]
        text = tokenizer.decode(ids[:stop])[len(tokenizer.decode(ids[:start])) :]
        assert text.endswith(end)
        replies.append(text[: -len(end)])
    if name == "base":  # as the template writes a reply: some trim it
        assert [reply.strip() for reply in replies] == [reply.strip() for reply in REPLIES]
    else:
        assert replies == [(" " if name == "pygmalion" else "") + reply for reply in REPLIES]


def test_generation_sees_the_tokens_training_saw(case):
    """The prompt before each reply is the training tokens up to that reply, generation prefix included."""
    _, _, tokenizer = case
    for conversation in (CONVERSATION, GREETING):
        ids, supervised = flat(tokenizer, conversation)
        replies = [index for index, turn in enumerate(conversation["turns"]) if turn["role"] == "bot"]
        for (start, _), reply in zip(supervised_runs(supervised), replies, strict=True):
            assert encode_prompt(tokenizer, conversation, conversation["turns"][:reply]) == ids[:start]


def test_a_conversation_encodes_the_same_alone_and_in_a_batch(case):
    _, _, tokenizer = case
    alone = encode_conversation(tokenizer, CONVERSATION)
    assert encode_conversations(tokenizer, [GREETING, CONVERSATION, GREETING])[1] == alone


# Texts where a faster call could part from transformers': code, odd whitespace, composed and emoji
# characters, special tokens written out, the empty text.
TRICKY_TEXTS = [
    *REPLIES,
    "```js\n\tconst s = '東京';  // café\n```\n",
    "  leading, trailing and  double  spaces  ",
    "Zoë 👩\u200d🔬 naïve\u00a0text\u3000!",
    "<|im_start|>user\nHi<|im_end|>\n</s>Mira: *nods*</s>",
    "",
]


def test_the_fast_backend_call_gives_the_ids_of_the_transformers_call(case):
    """shard encodes with the backend's encode_batch_fast (no offsets): the ids must be those of
    `tokenizer(texts)`, for text at a document's start and in its middle."""
    _, _, tokenizer = case
    texts = [*TRICKY_TEXTS, prompt_format(tokenizer).render_text(CONVERSATION)]
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    fast = exact_backend(tokenizer).encode_batch_fast(texts, add_special_tokens=False)
    assert [encoding.ids for encoding in fast] == expected
    assert encode_texts(tokenizer, texts, starts_text=True) == expected
    mid_text = mid_text_backend(tokenizer)
    if mid_text is not None:  # SentencePiece: its own backend, without the dummy prefix
        expected = [encoding.ids for encoding in mid_text.encode_batch(texts, add_special_tokens=False)]
    assert encode_texts(tokenizer, texts, starts_text=False) == expected


def test_the_fast_backend_call_ignores_truncation_as_the_transformers_call_does(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    tokenizer.backend_tokenizer.enable_padding(length=100)
    expected = tiny_tokenizer(TRICKY_TEXTS, add_special_tokens=False)["input_ids"]
    assert encode_texts(tokenizer, TRICKY_TEXTS, starts_text=True) == expected


def test_a_model_folders_chat_template_renders_the_ids_training_uses(case, tmp_path):
    """What base-model writes and every part copies (load, save): apply_chat_template on that tokenizer
    gives the shard's token ids, and where the template marks {% generation %}, its loss mask."""
    name, family, tokenizer = case
    tokenizer.save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(tmp_path / "base").save_pretrained(tmp_path / "part-01")
    folder = AutoTokenizer.from_pretrained(tmp_path / "part-01")
    assert recorded_format(folder) == name
    for conversation in (CONVERSATION, GREETING):
        ids, supervised = flat(folder, conversation)
        messages, variables = prompt_format(folder).messages(conversation)
        marked = name != "base"  # the base model's own template has no generation tags
        rendered = folder.apply_chat_template(messages, return_assistant_tokens_mask=marked, **variables)
        assert folder.apply_chat_template(messages, tokenize=False, **variables) == prompt_format(
            folder
        ).render_text(conversation)
        if family == LEGACY_PREFIX:
            assert rendered["input_ids"] != ids
            assert folder.decode(rendered["input_ids"]) == with_legacy_spaces(folder, folder.decode(ids))
            continue
        assert rendered["input_ids"] == ids
        if marked:
            assert rendered["assistant_masks"] == [int(flag) for flag in supervised]
        first_reply = next(index for index, turn in enumerate(conversation["turns"]) if turn["role"] == "bot")
        prompt_messages, _ = prompt_format(folder).messages(
            {**conversation, "turns": conversation["turns"][:first_reply]}
        )
        prompt = folder.apply_chat_template(prompt_messages, add_generation_prompt=True, **variables)
        assert prompt["input_ids"] == encode_prompt(folder, conversation, conversation["turns"][:first_reply])


# --- Each format's own rules -----------------------------------------------------------------------


def test_chatml_markers_are_single_special_tokens_added_where_missing():
    tokenizer = TOKENIZER_FAMILIES["gpt2-bpe"]()
    before = len(tokenizer)
    assert prepare_tokenizer(tokenizer, "chatml", "Assistant") == ["<|im_start|>", "<|im_end|>"]
    assert len(tokenizer) == before + 2 and tokenizer.init_kwargs[FORMAT_KEY] == "chatml"
    ids = tokenizer("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == before and ids[-1] == before + 1
    qwen = TOKENIZER_FAMILIES["qwen"]()  # has them already
    assert prepare_tokenizer(qwen, "chatml", "Assistant") == [] and len(qwen) == len(
        TOKENIZER_FAMILIES["qwen"]()
    )


def test_chatml_writes_the_persona_as_the_system_message():
    tokenizer = prepared("chatml", "qwen")
    text = prompt_format(tokenizer).render_text(CONVERSATION)
    assert text.startswith(
        "<|im_start|>system\nMira's Persona: A kind innkeeper.\nScenario: A stormy night.<|im_end|>\n"
        "<|im_start|>user\nHi there!\n  Any rooms, 2 nights?<|im_end|>\n<|im_start|>assistant\nOf course."
    )
    assert "```<|im_end|>\n<|im_start|>system\n*Thunder rolls.*<|im_end|>\n<|im_start|>user\n" in text
    no_scenario = prompt_format(tokenizer).render_text(GREETING)
    assert no_scenario.startswith("<|im_start|>system\nMira's Persona: A kind innkeeper.<|im_end|>\n")
    stops = prompt_format(tokenizer).stops
    assert stops.end_ids[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stops.turn_ids == (tokenizer.convert_tokens_to_ids("<|im_start|>"),) and not stops.turn_strings


def test_base_puts_the_persona_where_the_template_takes_it():
    tokenizers = prepared("base", "sentencepiece-metaspace"), prepared("base", LEGACY_PREFIX)
    llama3, gemma = map(prompt_format, tokenizers)
    assert llama3.system_message and llama3.messages(GREETING)[0][0] == {
        "role": "system",
        "content": "Mira's Persona: A kind innkeeper.",
    }
    # Gemma's refuses a system message: the persona opens the first user message, or is one of its own
    # when the bot speaks first; the narration joins the user's message before it.
    assert not gemma.system_message
    assert gemma.messages(CONVERSATION)[0][:3] == [
        {
            "role": "user",
            "content": "Mira's Persona: A kind innkeeper.\nScenario: A stormy night.\n\n"
            "Hi there!\n  Any rooms, 2 nights?",
        },
        {"role": "assistant", "content": REPLIES[0]},
        {"role": "user", "content": "*Thunder rolls.*\nHi there!\n  Any rooms, 2 nights?"},
    ]
    assert [m["role"] for m in gemma.messages(GREETING)[0]] == ["user", "assistant", "user", "assistant"]
    assert gemma.stops.end_ids[0] == gemma.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert gemma.stops.turn_ids == (gemma.tokenizer.convert_tokens_to_ids("<start_of_turn>"),)
    zephyr_tokenizer = prepared("base", "gpt2-bpe")  # its markers are text: stop at the text
    zephyr = prompt_format(zephyr_tokenizer)
    assert zephyr.stops.turn_strings == ("<|user|>",) and not zephyr.stops.turn_ids


def test_base_without_a_chat_template_is_a_one_line_error_naming_the_param():
    tokenizer = TOKENIZER_FAMILIES["qwen"]()
    with pytest.raises(ChatmillError, match=r"^params.yaml: prompt.format: base uses the base model's chat "):
        prepare_tokenizer(tokenizer, "base", "Assistant")


def test_base_with_a_template_that_rewrites_earlier_messages_is_a_one_line_error():
    tokenizer = TOKENIZER_FAMILIES["qwen"]()
    # Marks the last message: adding one changes the rendering of the one before.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(ChatmillError, match=r"does not begin with its rendering of the messages before"):
        prepare_tokenizer(tokenizer, "base", "Assistant")


def test_a_conversation_the_base_template_refuses_is_refused_alone():
    tokenizer = TOKENIZER_FAMILIES["qwen"]()
    tokenizer.chat_template = QWEN2.replace(
        "{% for m in messages %}",
        "{% for m in messages %}{% if 'forbidden' in m['content'] %}{{ raise_exception('no') }}{% endif %}",
    )
    prepare_tokenizer(tokenizer, "base", "Assistant")
    refused = copy.deepcopy(CONVERSATION)
    refused["turns"][1]["text"] = "a forbidden word"
    written, refusal, again = encode_conversations(tokenizer, [CONVERSATION, refused, CONVERSATION])
    assert written == again == encode_conversation(tokenizer, CONVERSATION)
    assert "the chat template refuses it (no)" in str(refusal)
    with pytest.raises(ChatmillError, match="refuses it"):
        encode_prompt(tokenizer, refused, refused["turns"])


def test_the_format_param_is_validated_and_a_tokenizer_without_a_record_is_pygmalion():
    assert validate_format({"format": "chatml"}) == "chatml"
    with pytest.raises(ChatmillError, match=r"prompt.format='alpaca' must be one of pygmalion, chatml, base"):
        validate_format({"format": "alpaca"})
    with pytest.raises(ChatmillError, match=r"prompt.format is missing"):
        validate_format({})
    assert recorded_format(TOKENIZER_FAMILIES["qwen"]()) == "pygmalion"  # chatmill before formats


# --- The scratch tokenizer, through the base-model stage --------------------------------------------


@pytest.mark.parametrize("name", ["pygmalion", "chatml"])
def test_the_scratch_tokenizer_in_models_base_renders_the_ids_training_uses(
    name, tmp_path, monkeypatch, capsys
):
    from chatmill.io import write_parquet
    from chatmill.schema import CONVERSATION_SCHEMA

    monkeypatch.chdir(tmp_path)
    scratch = {"vocab_size": 400, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    write_workspace(tmp_path, {"prompt": {"format": name}, "model": {"scratch": scratch}})
    (tmp_path / "data/clean").mkdir(parents=True)
    write_parquet(
        tmp_path / "data/clean/conversations.parquet", CONVERSATION_SCHEMA, [CONVERSATION, GREETING] * 20
    )
    run_stage("base_model")
    assert f"prompt.format {name}" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "models/base")
    config = json.loads((tmp_path / "models/base/tokenizer_config.json").read_text())
    assert config[FORMAT_KEY] == name and (tmp_path / "models/base/chat_template.jinja").is_file()
    for marker in FORMATS[name].special_tokens:  # one special token each, not text the trainer learned
        assert tokenizer.convert_ids_to_tokens(tokenizer(marker, add_special_tokens=False)["input_ids"]) == [
            marker
        ]
    for conversation in (CONVERSATION, GREETING):
        ids, supervised = flat(tokenizer, conversation)
        messages, variables = prompt_format(tokenizer).messages(conversation)
        rendered = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, **variables)
        assert rendered["input_ids"] == ids
        assert rendered["assistant_masks"] == [int(flag) for flag in supervised]


def test_base_on_the_scratch_tokenizer_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from chatmill.io import write_parquet
    from chatmill.schema import CONVERSATION_SCHEMA

    monkeypatch.chdir(tmp_path)
    write_workspace(tmp_path, {"prompt": {"format": "base"}, "model": {"scratch": {"vocab_size": 300}}})
    (tmp_path / "data/clean").mkdir(parents=True)
    write_parquet(tmp_path / "data/clean/conversations.parquet", CONVERSATION_SCHEMA, [CONVERSATION] * 20)
    with pytest.raises(SystemExit):
        run_stage("base_model")
    err = capsys.readouterr().err
    assert err.startswith("error: params.yaml: prompt.format: base uses the base model's chat template")
    assert err.count("\n") == 1 and not (tmp_path / "models/base").exists()
