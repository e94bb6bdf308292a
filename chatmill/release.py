"""Release: push a trained part to the Hugging Face Hub, as a model the community can load at once.

    python -m chatmill.release [--part N] [--repo OWNER/NAME] [--dry-run]      (`make release`)

Not a DVC stage: it publishes what the pipeline made. It builds release/ from models/part-NN (the
last trained part unless --part): the weights as safetensors in shards of release.max_shard_size,
the tokenizer with a chat template for the training prompt format, generation_config.json with the
recommended sampling setting (release.sampling, one of eval.grid) and a model card README.md with
the sources it was trained on, the training settings and results apart, the metrics and provenance.
The card names the run release.experiment, or else the DVC experiment or git branch checked out.
Then huggingface_hub's upload_folder pushes that folder to release.repo_id, branch release.revision,
deleting weight files of an earlier push that the new ones replace. It refuses without a token
(HF_TOKEN or `hf auth login`), with uncommitted changes, or when `dvc status` says the part is stale;
--dry-run only warns, builds release/ and prints what would be pushed. The token goes to
huggingface_hub and nowhere else.
"""

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import HfApi, ModelCardData, get_token
from huggingface_hub.errors import HTTPError
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase
from transformers.utils.hub import convert_file_size_to_int
from transformers.utils.logging import disable_progress_bar

import chatmill
from chatmill.errors import ChatmillError, exit_on_error
from chatmill.generation import Setting, validate_grid
from chatmill.io import atomic_dir, read_json, write_json
from chatmill.layout import (
    BASE_DIR,
    BREAKDOWN_FILE,
    CLEAN_DIR,
    MIXED_DIR,
    RAW_DIR,
    RELEASE_DIR,
    SHARDS_DIR,
    STATS,
    TRIMMED_DIR,
    model_dir,
    part_name,
    trained_parts,
)
from chatmill.params import load_params, require
from chatmill.prompt import PromptFormat, prompt_format
from chatmill.schema import USER_NAME, Conversation, Turn
from chatmill.sources import HubDataset, HubFile, parse_uri, validate_sources

LOCK_FILE = Path("dvc.lock")
MANIFEST_FILE = RAW_DIR / "manifest.json"
STATS_FILES = {
    "clean": CLEAN_DIR / STATS,
    "trim": TRIMMED_DIR / STATS,
    "mix": MIXED_DIR / STATS,
    "shard": SHARDS_DIR / STATS,
}
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
# Weights of an earlier push that would shadow the new ones (transformers prefers model.safetensors
# to shards): upload_folder deletes those the new folder does not hold. Other files on the branch stay.
STALE_WEIGHTS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
]
VERSIONS = ("transformers", "torch", "huggingface_hub", "dvc")
# A conversation of placeholders: how the card shows the prompt format and its template variables.
EXAMPLE = Conversation(
    id="example",
    source="example",
    bot_name="{bot}",
    persona="{persona}",
    scenario="{scenario}",
    turns=[
        Turn(role="user", name=USER_NAME, text="{user message}"),
        Turn(role="bot", name="{bot}", text="{reply}"),
    ],
    meta="{}",
)


# --- Params --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseParams:
    repo_id: str | None
    revision: str
    private: bool
    experiment: str | None  # None: named after the DVC experiment or git branch (experiment_name)
    bot_name: str
    sampling: Setting
    max_shard_size: str
    license: str
    tags: list[str]
    merge: bool  # an adapter part: the merged model (True), or the adapters alone for a Hub base


def _nonempty(section: dict[str, Any], key: str) -> str:
    value = require(section, key, "release", str)
    if not value.strip():
        raise ChatmillError(f"params.yaml: release.{key} is empty; set it")
    return value


def validate_release(section: dict[str, Any], grid: list[Setting], repo: str | None) -> ReleaseParams:
    """`repo` (REPO= on the command line) overrides release.repo_id; no repo at all is allowed until
    something is pushed."""
    repo_id = repo or require(section, "repo_id", "release", (str, type(None)))
    if repo_id is not None and not REPO_ID.fullmatch(repo_id):
        raise ChatmillError(f"release: repo {repo_id!r} must be OWNER/NAME (release.repo_id or REPO=)")
    settings = {setting.name: setting for setting in grid}
    sampling = require(section, "sampling", "release", str)
    if sampling not in settings:
        raise ChatmillError(
            f"params.yaml: release.sampling {sampling!r} is not a setting of eval.grid; use one of "
            f"{', '.join(settings)}"
        )
    max_shard_size = str(require(section, "max_shard_size", "release", (str, int)))
    try:
        convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise ChatmillError(
            f"params.yaml: release.max_shard_size {max_shard_size!r} must be a size such as 5GB"
        ) from None
    tags = require(section, "tags", "release", list)
    if not all(isinstance(tag, str) for tag in tags):
        raise ChatmillError(f"params.yaml: release.tags must be a list of strings, got {tags!r}")
    experiment = require(section, "experiment", "release", (str, type(None)))
    return ReleaseParams(
        repo_id=repo_id,
        revision=_nonempty(section, "revision"),
        private=require(section, "private", "release", bool),
        experiment=None if experiment is None else _nonempty(section, "experiment"),
        bot_name=_nonempty(section, "bot_name"),
        sampling=settings[sampling],
        max_shard_size=max_shard_size,
        license=_nonempty(section, "license"),
        tags=tags,
        merge=require(section, "merge", "release", bool),
    )


def last_trained_part(parts: int) -> int:
    trained = [part for part in trained_parts() if part <= parts]
    if not trained:
        raise ChatmillError(
            "release: no trained part in models/; run `dvc repro train-part1` or `make repro`"
        )
    return trained[-1]


# --- Provenance ----------------------------------------------------------------------------------


def lineage(lock: dict[str, Any], targets: list[str]) -> list[tuple[str, str, str]]:
    """(stage, output, md5) of the target stages and of every stage upstream of them, in dvc.lock order."""
    stages = lock.get("stages", {})
    for target in targets:
        if target not in stages:
            raise ChatmillError(f"release: {LOCK_FILE} has no stage {target}; run `dvc repro {target}`")
    producers = {out["path"]: name for name, stage in stages.items() for out in stage.get("outs", [])}
    needed: set[str] = set()
    todo = list(targets)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        for dep in stages[name].get("deps", []):
            todo += [
                producer
                for path, producer in producers.items()
                if dep["path"] == path or dep["path"].startswith(path + "/")
            ]
    return [
        (name, out["path"], out.get("md5", ""))
        for name, stage in stages.items()
        if name in needed
        for out in stage.get("outs", [])
    ]


def experiment_name(git_commit: str) -> str:
    """What the checked-out run is called: the DVC experiment whose commit it is (`dvc exp branch`
    makes such a branch), else the git branch, else the commit."""
    from dvc.repo import Repo  # only here: importing DVC takes seconds
    from dvc.repo.experiments.utils import exp_refs

    with Repo(".") as repo:  # the experiments whose commit is this one, not those based on it
        experiments = sorted(
            ref.name for ref in exp_refs(repo.scm) if repo.scm.get_ref(str(ref)) == git_commit
        )
    if experiments:
        return experiments[0]
    branch = git("rev-parse", "--abbrev-ref", "HEAD").strip()
    return branch if branch != "HEAD" else f"commit {git_commit[:7]}"


def commit_message(release: ReleaseParams, part: int, parts: int, git_commit: str) -> str:
    return f"Part {part}/{parts} of {release.experiment}, git {git_commit}"


def hub_datasets(sources: dict[str, dict]) -> list[str]:
    """The Hub data sets among the sources (hf://datasets/OWNER/NAME...), for the card's metadata."""
    locations = [parse_uri(spec["uri"]) for spec in sources.values()]
    return list(
        dict.fromkeys(where.repo_id for where in locations if isinstance(where, HubFile | HubDataset))
    )


def hub_base_model(base: str) -> str | None:
    """model.base when it is a Hub id (not scratch, not a local folder)."""
    return base if REPO_ID.fullmatch(base) and not Path(base).exists() else None


# --- The folder ----------------------------------------------------------------------------------


def generation_config(
    setting: Setting, max_new_tokens: int, tokenizer: PreTrainedTokenizerBase
) -> GenerationConfig:
    """The recommended setting, every value explicit (top_k 0 = off), and where a reply ends: the prompt
    format's end-of-turn and turn-start tokens (one id where there is one)."""
    eos_id = tokenizer.eos_token_id
    stops = prompt_format(tokenizer).stops
    stop_ids = [*stops.end_ids, *stops.turn_ids]
    return GenerationConfig(
        do_sample=True,
        temperature=setting.temperature,
        top_p=setting.top_p,
        top_k=setting.top_k,
        repetition_penalty=setting.repetition_penalty,
        max_new_tokens=max_new_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_ids[0] if len(stop_ids) == 1 else stop_ids,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id,
    )


def is_adapter(model_dir: Path) -> bool:
    """A part trained with train.adapter holds only its adapters, in peft's layout."""
    return (model_dir / "adapter_config.json").is_file()


def adapter_base(params: dict[str, Any], release: ReleaseParams) -> tuple[str, str] | None:
    """For adapters released alone: the Hub base they need, and its revision; None otherwise. A
    base that is not on the Hub (scratch, a local folder) cannot be named for users to load."""
    if release.merge:
        return None
    base = str(params["model"]["base"])
    if hub_base_model(base) is None:
        raise ChatmillError(
            f"release: release.merge: false publishes the adapters alone, for a base model on the Hub, "
            f"but model.base is {base!r}; set release.merge: true to publish the merged model"
        )
    return base, str(params["model"]["revision"])


def release_model(model_dir: Path, merge: bool) -> torch.nn.Module:
    """The model to publish: a whole part as it is; an adapter part over models/base, merged into
    it or left as adapters."""
    if not is_adapter(model_dir):
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype="auto"), model_dir)
    return model.merge_and_unload() if merge else model


def build_folder(
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    release: ReleaseParams,
    max_new_tokens: int,
    card: str,
    base: tuple[str, str] | None = None,
) -> list[Path]:
    """Write the release folder (replacing any earlier one); return its files, relative to it.
    With `base` (Hub id, revision), the adapters alone, pointing at that base."""
    tokenizer.chat_template = prompt_format(tokenizer).chat_template(release.bot_name)
    model = release_model(model_dir, merge=base is None)
    config = generation_config(release.sampling, max_new_tokens, tokenizer)
    with atomic_dir(out) as folder:
        if base is None:
            model.generation_config = config
            model.save_pretrained(folder, max_shard_size=release.max_shard_size)
        else:
            model.save_pretrained(folder)
            adapter_config = read_json(folder / "adapter_config.json")
            adapter_config["base_model_name_or_path"], adapter_config["revision"] = base
            write_json(folder / "adapter_config.json", adapter_config)
            config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(card, encoding="utf-8")
    return sorted(path.relative_to(out) for path in out.rglob("*") if path.is_file())


# --- The model card ------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return "—" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def counts(mapping: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in mapping.items()) or "none"


def card_metadata(release: ReleaseParams, params: dict[str, Any], adapters_alone: bool) -> str:
    return ModelCardData(
        license=release.license,
        base_model=hub_base_model(str(params["model"]["base"])),
        datasets=hub_datasets(params["sources"]) or None,
        tags=release.tags or None,
        pipeline_tag="text-generation",
        library_name="peft" if adapters_alone else "transformers",
    ).to_yaml()


def origin_text(params: dict[str, Any], adapter: bool, base: tuple[str, str] | None) -> str:
    """How the published weights came about: trained whole, or adapters merged or alone."""
    model_base, lora = str(params["model"]["base"]), params["train"].get("lora", {})
    low_rank = f"LoRA adapters (rank {lora.get('r')}, alpha {lora.get('alpha')})"
    if base is not None:
        return (
            f"fine-tuned as {low_rank} for `{base[0]}` at revision `{base[1]}` (this repository holds the "
            "adapters alone; transformers, with peft installed, loads that base under them)"
        )
    if adapter:
        under = "a base trained from scratch" if model_base == "scratch" else f"`{model_base}`"
        return f"fine-tuned as {low_rank}, here merged into {under},"
    return "trained from scratch" if model_base == "scratch" else f"fine-tuned from `{model_base}`"


def usage_section(release: ReleaseParams, prompt: PromptFormat) -> str:
    """How to chat with the model through transformers' pipeline, in its prompt format's terms."""
    repo = release.repo_id or "OWNER/NAME"
    _, variables = prompt.messages(EXAMPLE)
    stops = prompt.stops.turn_strings
    arguments = ["messages"]
    lines = []
    if variables:
        values = {"bot_name": "Mira", "scenario": "A stormy evening."}
        lines.append(f"variables = {json.dumps({name: values.get(name, '') for name in variables})}")
        arguments.append("tokenizer_encode_kwargs=variables")
    if stops:
        arguments.append(f"stop_sequence={json.dumps(stops[0])}")
    call = "\n".join([*lines, f"out = chat({', '.join(arguments)})"])
    template_variables = (
        f"The chat template takes the variables {', '.join(f'`{name}`' for name in variables)} "
        f"(`bot_name` defaults to **{release.bot_name}**), e.g. "
        '`tokenizer.apply_chat_template(messages, add_generation_prompt=True, bot_name="Mira")`. '
        if variables
        else ""
    )
    run_on = (
        f"`stop_sequence={json.dumps(stops[0])}` (or `stop_strings` and `tokenizer=` for `generate()`) "
        "also cuts a reply that runs on into your next turn."
        if stops
        else ""
    )
    return f"""## Usage

```python
from transformers import pipeline

chat = pipeline("text-generation", model="{repo}", revision="{release.revision}")
messages = [
    {{"role": "system", "content": "A retired sea captain who runs the harbour inn."}},  # the persona
    {{"role": "user", "content": "Any rooms free tonight?"}},
]
{call}
print(out[0]["generated_text"][-1]["content"])
```

`generation_config.json` holds the recommended sampling settings and the tokens that end a reply, so
`generate()` and the pipeline use them unless told otherwise. {template_variables}{run_on}
"""


def prompt_section(prompt: PromptFormat, bot_name: str) -> str:
    return f"""## Prompt format

The model was trained on conversations in this format (chatmill's `prompt.format: {prompt.name}`); the
tokenizer's chat template renders messages the same way, token for token:

```
{prompt.render_text(EXAMPLE).rstrip(chr(10))}
```

{prompt.describe(bot_name)}
"""


def sampling_section(release: ReleaseParams, max_new_tokens: int) -> str:
    setting = release.sampling
    values = table(
        ["do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"],
        [
            [
                True,
                setting.temperature,
                setting.top_p,
                f"{setting.top_k} (0 = off)",
                setting.repetition_penalty,
                max_new_tokens,
            ]
        ],
    )
    return f"""## Recommended sampling

`generation_config.json` holds setting `{setting.name}` of the sample-eval grid (`release.sampling`):

{values}
"""


def human_size(size: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def source_origin(spec: dict[str, Any], fetched: dict[str, Any]) -> str:
    """Where a source came from: its uri, and for a whole Hub dataset what fetch loaded of it."""
    origin = f"`{spec.get('uri')}`"
    if "commit" in fetched:
        loaded = f"config {fetched['config']}, split {fetched['split']}"
        origin += f" ({loaded}, commit `{fetched['commit'][:12]}`)"
    return origin


def source_size(fetched: dict[str, Any]) -> str | None:
    if "bytes" not in fetched:
        return None
    rows = f", {fetched['rows']:,} rows" if "rows" in fetched else ""
    return human_size(fetched["bytes"]) + rows


def share_text(share: float | None) -> str | None:
    return None if share is None else f"{share:.1%}"


def used_sources(params: dict[str, Any], stats: dict[str, dict]) -> str:
    """The sources that made it into the mix: name (format, share), for the card's first lines."""
    composition = stats["mix"].get("composition", {})
    used = [
        f"{name} ({spec.get('format')}, {share_text(composition[name]['share'])})"
        for name, spec in params["sources"].items()
        if composition.get(name, {}).get("share")
    ]
    return ", ".join(used) or "no source"


def data_section(params: dict[str, Any], stats: dict[str, dict], manifest: dict[str, dict], part: int) -> str:
    sources, trim = params["sources"], params["trim"]
    clean, trimmed, mixed, shards = stats["clean"], stats["trim"], stats["mix"], stats["shard"]
    composition = mixed.get("composition", {})
    source_rows = []
    for name, spec in sources.items():
        cleaned = clean.get("sources", {}).get(name, {})
        mixed_in = composition.get(name, {})
        source_rows.append(
            [
                name,
                spec.get("format"),
                source_origin(spec, manifest.get(name, {})),
                source_size(manifest.get(name, {})),
                cleaned.get("in"),
                cleaned.get("out"),
                trimmed.get("sources", {}).get(name, {}).get("out"),
                mixed_in.get("rows"),
                share_text(mixed_in.get("share")),
                share_text(mixed_in.get("target_share")),
            ]
        )
    if trim.get("enabled", True):
        rule = (
            f"Conversations whose median bot reply is at most {trim.get('threshold')} {trim.get('unit')} are "
            f"dropped; the chance of keeping one rises ({trim.get('curve')}) to 1 over the next "
            f"{trim.get('ramp')} {trim.get('unit')} (seed {trim.get('seed')}), for the sources with "
            "length-trim on."
        )
    else:
        rule = "Length-trim was disabled (`trim.enabled: false`): every conversation was kept."
    repeated = [
        f"{name} {numbers.get('repeat_factor')}x"
        + (f" (held back: {numbers['limit']})" if numbers.get("limit") else "")
        for name, numbers in composition.items()
        if numbers.get("repeat_factor", 1) > 1 or numbers.get("limit")
    ]
    trained = {part_name(k) for k in range(1, part + 1)}
    shard_rows = [
        [name, numbers.get("sequences"), numbers.get("tokens"), numbers.get("supervised_tokens")]
        for name, numbers in shards.get("parts", {}).items()
        if name in trained
    ]
    header = [
        "source",
        "format",
        "from",
        "size",
        "records",
        "kept by cleaning",
        "after length-trim",
        "in the mix",
        "share of the mix",
        "share asked",
    ]
    return f"""## Training data

{table(header, source_rows)}

"In the mix" counts conversations with repeats; shares are of the mix's {mixed.get("by")}.

**Cleaning**: {clean.get("in")} records in, {clean.get("out")} conversations out; dropped:
{counts(clean.get("dropped", {}))}; quarantined (malformed): {clean.get("quarantined")}.

**Length-trim** (against replies like "...", "Yes.", "Hm?"): {rule} Kept {trimmed.get("out")} of
{trimmed.get("in")} conversations (keep rate {trimmed.get("keep_rate")}).

**Mix**: {mixed.get("out")} conversations; dropped: {counts(mixed.get("dropped", {}))}; repeated:
{", ".join(repeated) or "none"}.

**Shards**: sequences of {shards.get("seq_len")} tokens; loss on the bot replies only. The parts this
model was trained on:

{table(["part", "sequences", "tokens", "supervised tokens"], shard_rows)}
"""


def training_section(params: dict[str, Any], train_state: dict[str, Any]) -> str:
    model, train = params["model"], params["train"]
    settings = [[f"model.{key}", f"`{model.get(key)}`"] for key in ("base", "revision")]
    settings += [[f"train.{key}", value] for key, value in train.items()]
    # What training measured (train_state.json of the part), apart from what it was told.
    results = [[key, value] for key, value in train_state.items()]
    return f"""## Training

DeepSpeed (ZeRO stage {train.get("zero_stage")}), effective batch {train.get("global_batch")}, one
part after another, each continuing the optimizer, learning-rate schedule and global step of the
one before.

Settings (params.yaml):

{table(["setting", "value"], settings)}

Results of this part (`train_state.json`; `lr` is the learning rate at its last step):

{table(["result", "value"], results)}
"""


def evaluation_section(
    metrics: dict[str, Any] | None, eval_params: dict[str, Any], release: ReleaseParams, model_dir: Path
) -> str:
    if metrics is None:
        return f"""## Evaluation

Not evaluated: `{BREAKDOWN_FILE}` is for `{eval_params.get("model")}`, not `{model_dir}`. Set
`eval.model: {model_dir}` and run `dvc repro sample-eval` to measure this part.
"""
    columns = ["short_rate", "median_words", "distinct_2", "regens_to_accept", "n_replies"]
    rows = [
        [f"`{name}`" + (" (recommended)" if name == release.sampling.name else "")]
        + [numbers.get(column) for column in columns]
        for name, numbers in sorted(metrics.get("settings", {}).items())
    ]
    rows.append(["all settings"] + [metrics.get("overall", {}).get(column) for column in columns])
    heldout = metrics.get("prompt_sets", {}).get("heldout", {}).get("n_prompts")
    return f"""## Evaluation

sample-eval: replies sampled from this model for every setting of the grid (up to
{eval_params.get("max_new_tokens")} new tokens each), among them replies to the last user turn of
{heldout} held-out conversations. Held-out loss {metrics.get("eval_loss")} per supervised token
(perplexity {metrics.get("perplexity")}). `short_rate` is the share of replies under
{eval_params.get("short_words")} words or of one word at most ("...", "Yes.", "Hm?"); `distinct_2` the
share of distinct word bigrams; `regens_to_accept` the samples drawn until an acceptable reply.

{table(["setting", *columns], rows)}
"""


def limitations_section(release: ReleaseParams, part: int, parts: int, sources: str, pii: dict) -> str:
    scrubbed = (
        f"cleaning replaced {', '.join(pii.get('types', []))} with placeholders"
        if pii.get("enabled")
        else "scrubbing was off: `clean.pii.enabled: false`"
    )
    unfinished = (
        f"\n- Part {part} of {parts}: an intermediate checkpoint, trained on {part}/{parts} of the data."
        if part < parts
        else ""
    )
    return f"""## Limitations

- It writes as the conversations it was trained on do ({sources}): it can produce offensive, sexual
  or false content; do not rely on it for facts, advice or anything safety-critical.
- Chat data may hold personal data that cleaning missed ({scrubbed}).
- How often its replies come out short or need regenerating, per sampling setting: see Evaluation.
- It can latch onto a mannerism and repeat it; the recommended setting uses repetition_penalty
  {release.sampling.repetition_penalty}.{unfinished}
"""


def provenance_section(
    params: dict[str, Any], git_commit: str, dirty: bool, hashes: list[tuple[str, str, str]]
) -> str:
    state = " (with uncommitted changes: a dry run, never pushed)" if dirty else ""
    versions = ", ".join(f"{name} {version(name)}" for name in VERSIONS)
    return f"""## Provenance

- git commit `{git_commit}`{state}
- chatmill {chatmill.__version__}; {versions}
- the outputs of the stages that made this model, as `dvc.lock` records them:

{table(["stage", "output", "md5"], [[stage, f"`{path}`", f"`{md5}`"] for stage, path, md5 in hashes])}

To rebuild it: `git checkout {git_commit}`, then `dvc pull` or `dvc repro`.

<details><summary>params.yaml</summary>

```yaml
{yaml.safe_dump(params, sort_keys=False, allow_unicode=True)}```

</details>
"""


def model_card(
    release: ReleaseParams,
    part: int,
    params: dict[str, Any],
    stats: dict[str, dict],
    manifest: dict[str, dict],
    train_state: dict[str, Any],
    metrics: dict[str, Any] | None,
    git_commit: str,
    dirty: bool,
    hashes: list[tuple[str, str, str]],
    prompt: PromptFormat,
    adapter: bool = False,
    base: tuple[str, str] | None = None,
) -> str:
    """The card; `adapter`: the part is adapters, published merged, or alone for `base` (Hub id,
    revision)."""
    parts = params["train"]["parts"]
    name = release.repo_id.split("/")[1] if release.repo_id else "chatmill model"
    folder = model_dir(part)
    origin = origin_text(params, adapter, base)
    sources = used_sources(params, stats)
    sections = [
        f"---\n{card_metadata(release, params, base is not None)}\n---\n\n# {name}\n\n"
        f"**{release.experiment}, part {part}/{parts}**: a conversational model {origin} by chatmill "
        f"on {sources}.\n",
        usage_section(release, prompt),
        prompt_section(prompt, release.bot_name),
        sampling_section(release, params["eval"]["max_new_tokens"]),
        data_section(params, stats, manifest, part),
        training_section(params, train_state),
        evaluation_section(metrics, params["eval"], release, folder),
        limitations_section(release, part, parts, sources, params.get("clean", {}).get("pii", {})),
        provenance_section(params, git_commit, dirty, hashes),
    ]
    return "\n".join(sections)


# --- Checks and the Hub --------------------------------------------------------------------------


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if result.returncode:
        raise ChatmillError(
            f"release: `git {' '.join(args)}` failed: {first_line(result.stderr)}; "
            "run from the repository root, after a first commit"
        )
    return result.stdout


def git_state() -> tuple[str, list[str]]:
    """The commit checked out, and the paths with uncommitted changes (untracked files included)."""
    return git("rev-parse", "HEAD").strip(), [line[3:] for line in git("status", "--porcelain").splitlines()]


def dvc_stale_stages(targets: list[str]) -> list[str]:
    """The stages among the targets and their upstream ones whose outputs do not match code and params."""
    command = [sys.executable, "-m", "dvc", "status", "--json", "--with-deps", *targets]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise ChatmillError(f"release: `dvc status` failed: {first_line(result.stderr)}")
    return sorted(json.loads(result.stdout or "{}"))


def some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def refusals(token: str | None, repo_id: str | None, dirty: list[str], targets: list[str]) -> Iterator[str]:
    """Reasons not to push, cheapest check first; lazy, so a refusal stops the slower checks."""
    if token is None:
        yield "no Hugging Face token: set HF_TOKEN or run `hf auth login`"
    if repo_id is None:
        yield "no Hub repo: set release.repo_id in params.yaml or pass REPO=OWNER/NAME"
    if dirty:
        yield f"the git tree has uncommitted changes ({some(dirty)}); commit them first"
    stale = dvc_stale_stages(targets)
    if stale:
        yield (
            f"`dvc status` is not clean ({some(stale)}): the model does not match the code and params; "
            f"run `dvc repro {' '.join(targets)}` and commit dvc.lock"
        )


def push(api: HfApi, folder: Path, release: ReleaseParams, message: str) -> str:
    """Create the repo and branch if missing, set the visibility, upload the folder; return the URL of
    the commit. Weight files already on the branch that the folder does not hold are deleted with it."""
    repo_id, revision = release.repo_id, release.revision
    api.create_repo(repo_id, private=release.private, exist_ok=True)
    api.update_repo_settings(repo_id, private=release.private)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        commit_message=message,
        delete_patterns=STALE_WEIGHTS,
    )
    return commit.commit_url


def push_error(error: Exception, repo_id: str) -> str:
    """One line: what failed, what the Hub said, and for a refused token, what to check."""
    reason = first_line(str(error))
    if server := getattr(error, "server_message", None):
        reason += f": {first_line(server)}"
    status = getattr(getattr(error, "response", None), "status_code", None)
    hint = f"; check that the token may write to {repo_id.split('/')[0]}" if status in (401, 403) else ""
    return f"release: pushing to {repo_id} failed: {reason}{hint}"


def describe(files: list[Path], folder: Path) -> str:
    return "\n".join(f"  {path.as_posix():<40} {(folder / path).stat().st_size:>14,} bytes" for path in files)


# --- Main ----------------------------------------------------------------------------------------


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", type=int, help="the part to release (default: the last trained one)")
    parser.add_argument("--repo", help="OWNER/NAME, instead of release.repo_id")
    parser.add_argument(
        "--dry-run", action="store_true", help="build release/ and print what would be pushed"
    )
    args = parser.parse_args()

    params = load_params()
    sections = load_params("release", "sources", "trim", "model", "train", "eval")
    eval_params = sections["eval"]
    validate_sources(sections["sources"])
    release = validate_release(
        sections["release"], validate_grid(require(eval_params, "grid", "eval")), args.repo
    )
    parts = require(sections["train"], "parts", "train", int)
    part = last_trained_part(parts) if args.part is None else args.part
    folder = model_dir(part)
    if not 1 <= part <= parts or not (folder / "train_state.json").is_file():
        raise ChatmillError(f"release: {folder} is not a trained part; run `dvc repro train-part{part}`")
    evaluated = Path(require(eval_params, "model", "eval", str)) == folder
    targets = [f"train-part{part}"] + (["sample-eval"] if evaluated else [])

    token = get_token()
    git_commit, dirty = git_state()
    if release.experiment is None:
        release = dataclasses.replace(release, experiment=experiment_name(git_commit))
    problems = refusals(token, release.repo_id, dirty, targets)
    if args.dry_run:
        for problem in problems:
            print(f"warning: release: {problem} (DRY_RUN: not pushing anyway)", file=sys.stderr)
    elif problem := next(problems, None):
        raise ChatmillError(f"release: {problem}")

    for path in [*STATS_FILES.values(), MANIFEST_FILE, LOCK_FILE] + ([BREAKDOWN_FILE] if evaluated else []):
        if not path.is_file():
            raise ChatmillError(f"release: {path} not found; run `make repro` (or `dvc pull`)")
    disable_progress_bar()  # transformers' bars for loading and saving: seconds, and noise in the log
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapter = is_adapter(folder)
    base = adapter_base(params, release) if adapter else None
    card = model_card(
        release,
        part,
        params,
        {name: read_json(path) for name, path in STATS_FILES.items()},
        read_json(MANIFEST_FILE),
        read_json(folder / "train_state.json"),
        read_json(BREAKDOWN_FILE) if evaluated else None,
        git_commit,
        bool(dirty),
        lineage(yaml.safe_load(LOCK_FILE.read_text()), targets),
        prompt_format(tokenizer),
        adapter,
        base,
    )
    files = build_folder(folder, tokenizer, RELEASE_DIR, release, eval_params["max_new_tokens"], card, base)
    message = commit_message(release, part, parts, git_commit)
    visibility = "private" if release.private else "public"
    where = f"{release.repo_id or 'OWNER/NAME'}, branch {release.revision} ({visibility})"
    if args.dry_run:
        print(f"release: DRY_RUN: built {RELEASE_DIR}/; would push it to {where} in one commit:")
        print(f'  "{message}"\n{describe(files, RELEASE_DIR)}')
        return
    print(f"release: pushing {RELEASE_DIR}/ ({folder}) to {where}")
    try:
        url = push(HfApi(token=token), RELEASE_DIR, release, message)
    except (OSError, HTTPError, ValueError) as error:  # HTTP errors, no connection, offline mode
        raise ChatmillError(push_error(error, release.repo_id)) from None
    print(f"release: {message}: {url}")


if __name__ == "__main__":
    main()
