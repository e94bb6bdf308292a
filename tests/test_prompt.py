"""The prompt format at token level, for each family of tokenizer real base models use (built locally
in conftest: GPT-2's byte-level BPE for GPT-J and GPT-NeoX, SentencePiece for Llama and Mistral in
both of its spellings, Qwen's byte-level BPE): the segment-wise encoding decodes to exactly the text
of the format, supervises exactly the replies and their end-of-turn token, and gives generation the
same tokens as training."""

import pytest
from conftest import TOKENIZER_FAMILIES, make_conversation

from chatmill.prompt import encode_conversation, encode_conversations, encode_prompt, render_text

REPLIES = (
    "Of course.  Two silver a night.\n\n```python\ndef price(nights):\n    return 2 * nights\n```",
    "Yes.",
    " *She smiles.*   東京 🎉",
)
CONVERSATION = make_conversation("c1", bot_replies=REPLIES, user="Hi there!\n  Any rooms, 2 nights?")


@pytest.fixture(scope="module", params=sorted(TOKENIZER_FAMILIES))
def tokenizer(request):
    return TOKENIZER_FAMILIES[request.param]()


def flat(tokenizer, conversation):
    header, turns = encode_conversation(tokenizer, conversation)
    ids = header.ids + [token for turn in turns for token in turn.ids]
    supervised = header.supervised + [flag for turn in turns for flag in turn.supervised]
    return ids, supervised


def test_the_tokens_decode_to_exactly_the_text_of_the_format(tokenizer):
    ids, _ = flat(tokenizer, CONVERSATION)
    assert tokenizer.decode(ids) == render_text(CONVERSATION, tokenizer.eos_token)


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


def test_the_supervised_tokens_are_each_reply_and_its_end_of_turn_token(tokenizer):
    """Decoded in place (a SentencePiece decoder drops a leading space at the start of what it decodes)."""
    ids, supervised = flat(tokenizer, CONVERSATION)
    replies = []
    for start, end in supervised_runs(supervised):
        assert ids[end - 1] == tokenizer.eos_token_id
        replies.append(tokenizer.decode(ids[: end - 1])[len(tokenizer.decode(ids[:start])) :])
    assert replies == [" " + reply for reply in REPLIES]


def test_generation_sees_the_tokens_training_saw(tokenizer):
    """The prompt before a reply is the training tokens up to that reply's "{bot}:"."""
    ids, supervised = flat(tokenizer, CONVERSATION)
    first_reply = supervised.index(True)
    prompt = encode_prompt(tokenizer, CONVERSATION, CONVERSATION["turns"][:1])
    assert prompt == ids[:first_reply]


def test_a_conversation_encodes_the_same_alone_and_in_a_batch(tokenizer):
    other = make_conversation("c2", bot_replies=("Hm?",), user="Of course.  Two silver a night.")
    alone = encode_conversation(tokenizer, CONVERSATION)
    assert encode_conversations(tokenizer, [other, CONVERSATION, other])[1] == alone
