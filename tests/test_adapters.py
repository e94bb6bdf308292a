"""Adapters (train.adapter: lora, through peft, under DeepSpeed): only the adapters learn; the base
stays bitwise as it was; the loss falls; part N continues part N-1's adapters, optimizer and step;
the merged model gives the adapter model's logits; a killed part resumes to the same adapters. QLoRA
is refused on the CPU with one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, write_workspace
from safetensors.torch import load_file
from test_release import PARAMS as RELEASE_PARAMS
from test_release import settings as release_settings
from test_train_resume import TRAIN, packed_shard

from chatmill.errors import ChatmillError
from chatmill.flops import flops_per_token, linear_weights
from chatmill.io import read_json
from chatmill.modeling import scratch_model
from chatmill.release import adapter_base, build_folder, origin_text, validate_release
from chatmill.shards import save_shard
from chatmill.training import trainable_model, validate_train

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
ADAPTER_TRAIN = {**TRAIN, "adapter": "lora", "lora": LORA, "lr": 1e-2, "cpu_ranks": 1}
SCRATCH = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
SCRATCH |= {"num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32}
STEPS, SAVE_EVERY = 12, 5
# Every linear layer of the tiny Llama (q, k, v, o; gate, up, down) gets A (r x in) and B (out x r).
H, INTER, KV = 32, 64, 2 * 16  # hidden, intermediate, key-value width (2 heads of 16)
ADAPTED = [(H, H), (H, KV), (H, KV), (H, H), (H, INTER), (H, INTER), (INTER, H)]  # (in, out) per layer
LORA_PARAMETERS = 2 * sum(LORA["r"] * (into + out) for into, out in ADAPTED)


@pytest.fixture
def base(tmp_path, monkeypatch, tiny_tokenizer) -> Path:
    monkeypatch.chdir(tmp_path)
    scratch_model(SCRATCH, tiny_tokenizer, seed=0).save_pretrained("models/base")
    tiny_tokenizer.save_pretrained("models/base")
    return tmp_path


def test_only_the_adapters_receive_gradients(base):
    model, _ = trainable_model(1, ADAPTER_TRAIN, Path("models/base"), torch.device("cpu"), 32)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == LORA_PARAMETERS
    assert all("lora_A" in name or "lora_B" in name for name in trainable)
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    with_gradient = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_gradient == set(trainable)


def test_flops_count_the_frozen_base_at_four_per_weight(base):
    model, _ = trainable_model(1, ADAPTER_TRAIN, Path("models/base"), torch.device("cpu"), 32)
    weights = linear_weights(model)
    frozen = sum(w.numel() for w in weights if not w.requires_grad)
    assert sum(w.numel() for w in weights if w.requires_grad) == LORA_PARAMETERS
    attention = 12 * 2 * 32 * 32  # layers x attention width x seq_len
    assert flops_per_token(model, 32) == 6 * LORA_PARAMETERS + 4 * frozen + attention


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"adapter": "qlora"},
            "train.adapter: qlora loads the base in 4 bits through bitsandbytes, on CUDA GPUs only",
        ),
        ({"adapter": "dora"}, "train.adapter is 'dora'; use one of none, lora, qlora"),
        ({"lora": {**LORA, "r": 0}}, "train.lora.r=0 must be >= 1"),
        ({"lora": {**LORA, "dropout": 1.0}}, r"train.lora.dropout=1.0 must be in \[0, 1\)"),
        ({"lora": {**LORA, "target_modules": []}}, "train.lora.target_modules must be all-linear or a list"),
        (
            {"lora": {**LORA, "rank": 8}},
            "train.lora has unknown rank; known: r, alpha, dropout, target_modules",
        ),
    ],
)
def test_bad_adapter_params_are_one_line_errors(change, message):
    with pytest.raises(ChatmillError, match=message):
        validate_train({**ADAPTER_TRAIN, **change})


# --- Real parts -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("adapters")
    scratch_model(SCRATCH, tiny_tokenizer, seed=0).save_pretrained(folder / "models/base")
    tiny_tokenizer.save_pretrained(folder / "models/base")
    rng = np.random.default_rng(0)
    for part in (1, 2):
        save_shard(
            folder / f"data/shards/part-0{part}", packed_shard(rng, STEPS * TRAIN["global_batch"], 300)
        )
    save_shard(folder / "data/shards/eval", packed_shard(rng, 7, 300))
    write_workspace(folder, {"train": {**ADAPTER_TRAIN, "save_every": SAVE_EVERY}})
    return folder


def start_part(folder: Path, part: int) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "stages/train.py"), "--part", str(part)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_part(folder: Path, part: int) -> str:
    process = start_part(folder, part)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return out


@pytest.fixture(scope="module")
def two_parts(files, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("parts")
    subprocess.run(["cp", "-a", f"{files}/.", str(folder)], check=True)
    run_part(folder, 1)
    run_part(folder, 2)
    return folder


def adapter_model(folder: Path, part: int):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder / "models/base")
    return PeftModel.from_pretrained(base, folder / f"models/part-{part:02d}").eval()


@pytest.mark.e2e
def test_a_part_writes_its_adapters_in_peft_s_layout_and_the_loss_falls(two_parts):
    part = two_parts / "models/part-01"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in part.iterdir()
    }
    assert not (part / "model.safetensors").exists()  # the base is models/base, not copied
    state = read_json(part / "train_state.json")
    assert state["trainable_parameters"] == LORA_PARAMETERS
    assert state["loss_last"] < state["loss_first"]
    assert (
        sum(tensor.numel() for tensor in load_file(part / "adapter_model.safetensors").values())
        == LORA_PARAMETERS
    )
    # the DeepSpeed state holds the adapters and their optimizer only: a few KB, not the base
    assert (part / "resume/final/mp_rank_00_model_states.pt").stat().st_size < 200_000


@pytest.mark.e2e
def test_the_base_weights_are_bitwise_unchanged_and_the_merge_gives_the_adapter_s_logits(two_parts):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(two_parts / "models/base").state_dict()
    model = adapter_model(two_parts, 2)
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        merged_model = model.merge_and_unload()
        merged = merged_model(input_ids=ids).logits
    # fp32: merging adds B @ A x scale into each weight once; the sums differ in the last bits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    changed = {
        name for name, tensor in merged_model.state_dict().items() if not torch.equal(tensor, base[name])
    }
    assert changed and all(name.endswith("proj.weight") for name in changed)  # only adapted weights move
    # ... and the base under the adapters is models/base exactly
    for name, tensor in adapter_model(two_parts, 2).get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, base[name.replace(".base_layer", "")]), name


@pytest.mark.e2e
def test_part_2_continues_part_1_s_adapters_optimizer_and_step(two_parts):
    first, second = (read_json(two_parts / f"models/part-0{k}/train_state.json") for k in (1, 2))
    assert second["global_step"] == 2 * first["global_step"] == 2 * STEPS
    optimizer = torch.load(
        next((two_parts / "models/part-02/resume/final").glob("*optim_states.pt")),
        weights_only=False,
        map_location="cpu",
    )
    assert int(optimizer["optimizer_state_dict"]["base_optimizer_state"]["state"][0]["step"]) == 2 * STEPS
    one, two = (load_file(two_parts / f"models/part-0{k}/adapter_model.safetensors") for k in (1, 2))
    assert one.keys() == two.keys() and any(not torch.equal(one[name], two[name]) for name in one)


@pytest.mark.e2e
def test_a_killed_adapter_part_resumes_to_the_same_adapters(files, two_parts, tmp_path):
    subprocess.run(["cp", "-a", f"{files}/.", str(tmp_path)], check=True)
    process = start_part(tmp_path, 1)
    checkpoint = tmp_path / f"checkpoints/part-01/step-{SAVE_EVERY:06d}"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert "resuming from checkpoints/part-01/step-" in run_part(tmp_path, 1)
    resumed = load_file(tmp_path / "models/part-01/adapter_model.safetensors")
    uninterrupted = load_file(two_parts / "models/part-01/adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name


# --- Downstream: sample-eval, compare, the release --------------------------------------------------


@pytest.mark.e2e
def test_an_adapter_run_is_evaluated_compared_and_released_merged(tmp_path):
    """Through DVC, the embedded default's stages with adapters: sample-eval, `make compare` and the
    release load adapter parts; the release is the merged model; adapters alone need a Hub base."""
    from test_end_to_end import TINY, new_repo, run, stages_run
    from transformers import pipeline

    changes = TINY | {
        "train": TINY["train"] | {"parts": 2, "adapter": "lora", "lr": 5e-3},
        "eval": TINY["eval"] | {"model": "models/part-02"},
        "release": {"sampling": "t0.7-p0.9-k0-r1.1"},  # one of TINY's grid
    }
    repo = new_repo(tmp_path / "repo", 0.05, changes)
    ran = stages_run(run(repo, "dvc", "repro"))
    assert {"train-part1", "train-part2", "sample-eval"} <= ran
    assert (repo / "models/part-02/adapter_config.json").exists()
    assert read_json(repo / "reports/sample-eval.json")["overall"]["n_replies"] > 0

    run(repo, sys.executable, "-m", "chatmill.compare", "models/part-01", "models/part-02")
    assert (repo / "reports/compare.html").exists()

    run(repo, sys.executable, "-m", "chatmill.release", "--dry-run")
    release = repo / "release"
    assert (release / "model.safetensors").exists() and not (release / "adapter_config.json").exists()
    card = (release / "README.md").read_text()
    assert (
        "fine-tuned as LoRA adapters (rank 8, alpha 16), here merged into a base trained from scratch" in card
    )
    chat = pipeline("text-generation", model=str(release))
    messages = [{"role": "system", "content": "A kind innkeeper."}, {"role": "user", "content": "A room?"}]
    assert chat(messages, max_new_tokens=3, do_sample=False)[0]["generated_text"][-1]["role"] == "assistant"

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["release"]["merge"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused = subprocess.run(
        [sys.executable, "-m", "chatmill.release", "--dry-run"], cwd=repo, capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: release: release.merge: false publishes the adapters alone, for a base model on the Hub, "
        "but model.base is 'scratch'; set release.merge: true to publish the merged model"
    )


@pytest.mark.e2e
def test_adapters_released_alone_name_their_hub_base_and_load_under_it(two_parts, tmp_path, monkeypatch):
    """release.merge: false with a Hub base: the folder holds the adapters in peft's layout, pointing
    at that base and revision, and the card says so; under the base they give the part's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(two_parts)
    section = {**RELEASE_PARAMS["release"], "merge": False}
    released = validate_release(section, release_settings(), None)
    params = {"model": {"base": "acme/tiny-llama", "revision": "0123abc"}, "train": ADAPTER_TRAIN}
    base = adapter_base(params, released)
    assert base == ("acme/tiny-llama", "0123abc")
    tokenizer = AutoTokenizer.from_pretrained("models/part-02")
    files = build_folder(Path("models/part-02"), tokenizer, tmp_path / "release", released, 8, "card", base)
    names = {path.name for path in files}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names
    adapter_config = read_json(tmp_path / "release/adapter_config.json")
    assert (adapter_config["base_model_name_or_path"], adapter_config["revision"]) == base
    assert "for `acme/tiny-llama` at revision `0123abc` (this repository holds the adapters alone" in (
        origin_text(params, adapter=True, base=base)
    )

    ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(1))
    alone = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained("models/base"), tmp_path / "release"
    )
    with torch.no_grad():
        assert torch.equal(
            alone.eval()(input_ids=ids).logits, adapter_model(two_parts, 2)(input_ids=ids).logits
        )
