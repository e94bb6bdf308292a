"""chatmill/generation.py: the sampling grid, and replies sampled exactly as a setting says (on the tiny
model of tests/test_evaluation.py)."""

import re

import pytest
import torch
from test_evaluation import CONVERSATIONS, GRID, make_tokenizer, save_model
from transformers import GenerationConfig

from chatmill import evaluation, generation
from chatmill.errors import ChatmillError
from chatmill.generation import Reply, Setting
from chatmill.prompt import encode_prompt, prepare_tokenizer, prompt_format


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tokenizer = make_tokenizer()
    folder = save_model(tokenizer, tmp_path_factory.mktemp("model") / "part-10")
    return tokenizer, generation.load_model(folder, "cpu")


# --- The grid ------------------------------------------------------------------------------------


def test_grid_settings_and_names():
    settings = generation.validate_grid(GRID)
    assert [s.name for s in settings] == ["t0.7-p0.9-k40-r1.1", "t1.0-p1.0-k0-r1.0"]
    assert settings[1].top_k == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperature": None}, "eval.grid[0].temperature is missing"),
        ({"top_k": None}, "eval.grid[0].top_k is missing"),
        ({"temperature": 0}, "temperature=0.0 must be > 0"),
        ({"top_p": 0}, "top_p=0.0 must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p=1.5 must be in (0, 1]"),
        ({"top_k": -1}, "top_k=-1 must be >= 0"),
        ({"top_k": 0.5}, "eval.grid[0].top_k must be int"),
        ({"repetition_penalty": 0}, "repetition_penalty=0.0 must be > 0"),
        ({"typical_p": 0.9}, "unknown key(s) typical_p"),
    ],
)
def test_invalid_grid_entries(change, message):
    entry = {**GRID[0], **change}
    entry = {key: value for key, value in entry.items() if value is not None}
    with pytest.raises(ChatmillError, match=re.escape(message)):
        generation.validate_grid([entry])


def test_empty_or_repeated_grid():
    with pytest.raises(ChatmillError, match="non-empty list"):
        generation.validate_grid([])
    with pytest.raises(ChatmillError, match="repeats setting"):
        generation.validate_grid([GRID[0], dict(GRID[0])])


# --- Replies -------------------------------------------------------------------------------------


def test_finish_tells_why_a_reply_ended(tiny):
    tokenizer = tiny[0]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stops = prompt_format(tokenizer).stops
    ids = tokenizer.encode(" Off we go!", add_special_tokens=False)
    assert generation.finish(tokenizer, ids + [eos, pad, pad], stops, pad) == Reply(
        "Off we go!", len(ids) + 1, "eos"
    )
    assert generation.finish(tokenizer, ids, stops, pad) == Reply("Off we go!", len(ids), "max_tokens")
    turn_ids = ids + tokenizer.encode("\nYou:", add_special_tokens=False)
    reply = generation.finish(tokenizer, turn_ids + [pad], stops, pad)
    assert (reply.text, reply.stop, reply.new_tokens) == ("Off we go!", "turn", len(turn_ids))


def test_a_chatml_reply_ends_at_im_end_or_at_the_next_turns_im_start():
    tokenizer = make_tokenizer()
    prepare_tokenizer(tokenizer, "chatml", "Assistant")
    stops, pad = prompt_format(tokenizer).stops, tokenizer.pad_token_id
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    ids = tokenizer.encode("Off we go!", add_special_tokens=False)
    assert generation.finish(tokenizer, ids + [im_end, pad], stops, pad) == Reply(
        "Off we go!", len(ids) + 1, "eos"
    )
    user = tokenizer.encode("user\nAnd then?", add_special_tokens=False)
    assert generation.finish(tokenizer, ids + [im_start, *user], stops, pad) == Reply(
        "Off we go!", len(ids) + 1, "turn"
    )
    # "You:" is text like any other in ChatML
    you = tokenizer.encode("\nYou: hi", add_special_tokens=False)
    assert generation.finish(tokenizer, ids + you, stops, pad) == Reply(
        "Off we go!\nYou: hi", len(ids + you), "max_tokens"
    )
    config = generation.generation_config(generation.validate_grid(GRID)[0], 8, stops, pad)
    assert config.eos_token_id == [im_end, tokenizer.eos_token_id, im_start] and config.stop_strings is None


def test_batched_left_padded_greedy_matches_one_at_a_time(tiny):
    tokenizer, model = tiny
    prompts = [evaluation.prompt_ids(tokenizer, p, 100) for p in evaluation.heldout_prompts(CONVERSATIONS, 3)]
    assert len({len(p) for p in prompts}) == 3  # different lengths, so the batch really is padded
    greedy = GenerationConfig(
        do_sample=False,
        max_new_tokens=12,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=list(prompt_format(tokenizer).stops.turn_strings),
    )
    batched = generation.generate_replies(model, tokenizer, prompts, greedy, batch_size=3)
    single = generation.generate_replies(model, tokenizer, prompts, greedy, batch_size=1)
    assert batched == single
    assert any(reply.text for reply in batched)


def test_top_k_zero_is_off_and_checkpoint_defaults_stay_out(tiny):
    tokenizer, model = tiny
    prompt = torch.tensor([encode_prompt(tokenizer, CONVERSATIONS[0], CONVERSATIONS[0]["turns"][:1])])
    for top_k, kept in ((0, len(tokenizer)), (40, 40)):
        setting = Setting(temperature=1.0, top_p=1.0, top_k=top_k, repetition_penalty=1.0)
        config = generation.generation_config(
            setting, 3, prompt_format(tokenizer).stops, tokenizer.pad_token_id
        )
        config.output_scores, config.return_dict_in_generate = True, True
        scores = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), generation_config=config, tokenizer=tokenizer
        ).scores
        # Tokens that sampling may pick keep a finite score; the checkpoint's top_k=50 and typical_p
        # would leave fewer.
        assert [int(torch.isfinite(step).sum()) for step in scores] == [kept] * len(scores)
