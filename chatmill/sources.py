"""The `sources` section of params.yaml: checked as a whole up front; each uri told apart by where it lives.

    sources:
      NAME: {uri, format, sha256 (optional), trim, weight}
      NAME: {uri: hf://datasets/OWNER/NAME[@REV], config (optional), split (optional), format, trim, weight}

A uri is a repo-relative path, an http(s):// URL, one file of a Hub dataset
(hf://datasets/OWNER/NAME[@REV]/PATH), or a whole Hub dataset (hf://datasets/OWNER/NAME[@REV]): one
split of one config of it, as the `datasets` library loads it. @REV is a branch, tag or commit, as in
huggingface_hub's hf:// paths; fetch records the commit it resolved to.
"""

import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from chatmill.errors import ChatmillError
from chatmill.params import require

KEYS = ("uri", "format", "sha256", "trim", "weight", "config", "split")
DATASET_KEYS = ("config", "split")  # which rows of a whole Hub dataset; no meaning for one file
DEFAULT_SPLIT = "train"  # the split a whole Hub dataset is read from unless `split` says otherwise
# Names become folders under data/raw/, next to manifest.json: no dots, no slashes.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
HUB_DATASET = re.compile(
    r"hf://datasets/(?P<repo_id>[^/@]+/[^/@]+)(?:@(?P<revision>[^/]+))?(?:/(?P<path>.+))?"
)
HUB_FORMS = "hf://datasets/OWNER/NAME[@REV] (a whole dataset) or hf://datasets/OWNER/NAME[@REV]/PATH (a file)"
URI_FORMS = f"a repo-relative path, an http(s):// URL, {HUB_FORMS}"


@dataclass(frozen=True)
class LocalPath:
    path: str

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class HttpUrl:
    url: str

    @property
    def file_name(self) -> str:
        return PurePosixPath(unquote(urlsplit(self.url).path)).name


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    revision: str
    path_in_repo: str

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.path_in_repo).name


@dataclass(frozen=True)
class HubDataset:
    """A whole dataset repo: fetch loads one split of one config of it through `datasets`."""

    repo_id: str
    revision: str


Location = LocalPath | HttpUrl | HubFile | HubDataset


def parse_uri(uri: str) -> Location:
    """Tell where a source lives; ValueError (saying which forms are accepted) for anything else."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "":
        location: Location = LocalPath(uri)
    elif scheme in ("http", "https"):
        location = HttpUrl(uri)
    elif scheme == "hf":
        match = HUB_DATASET.fullmatch(uri)
        if match is None:
            raise ValueError(f"{uri!r} is not of the form {HUB_FORMS}")
        # A revision such as refs/pr/1 is written percent-encoded (refs%2Fpr%2F1), as huggingface_hub does.
        revision = unquote(match["revision"] or "main")
        if match["path"] is None:
            return HubDataset(match["repo_id"], revision)
        location = HubFile(match["repo_id"], revision, match["path"])
    else:
        raise ValueError(f"{uri!r} has unsupported scheme '{scheme}'; use {URI_FORMS}")
    # The file keeps its name in data/raw/, and the readers pick the container by its extension.
    if location.file_name in ("", ".", ".."):
        raise ValueError(f"{uri!r} does not end in a file name")
    return location


REQUIRED = ("uri", "format", "trim", "weight")


def validate_sources(sources: Any, needed: tuple[str, ...] = REQUIRED) -> dict[str, dict[str, Any]]:
    """Check the sources section (or the keys of it that a stage declares: `needed`, which each source
    must have) before anything is read; return it sorted by name, sha256 lower-case (or None).

    Every problem is a one-line ChatmillError naming its key."""
    if not isinstance(sources, dict):
        raise ChatmillError("params.yaml: sources must be a mapping of NAME: {uri, format, trim, weight}")
    if not sources:
        raise ChatmillError("params.yaml: sources is empty; add at least one source")
    validated = {}
    for name in sorted(sources, key=str):
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ChatmillError(f"params.yaml: source name {name!r} must be letters, digits, _ and - only")
        validated[name] = _validate_source(name, sources[name], needed)
    if "weight" in needed and not any(source["weight"] > 0 for source in validated.values()):
        raise ChatmillError(
            "params.yaml: all sources have weight 0; give at least one source a positive weight"
        )
    return validated


def _validate_source(name: str, source: Any, needed: tuple[str, ...]) -> dict[str, Any]:
    where = f"sources.{name}"
    if not isinstance(source, dict):
        raise ChatmillError(f"params.yaml: {where} must be a mapping with keys uri, format, trim, weight")
    # Unknown keys first: a misspelt `sha265` would otherwise silently turn verification off.
    unknown = sorted(set(source) - set(KEYS), key=str)
    if unknown:
        names = ", ".join(map(str, unknown))
        raise ChatmillError(f"params.yaml: {where} has unknown key(s) {names}; known: {', '.join(KEYS)}")
    for key in needed:
        require(source, key, where)
    location = None
    if "uri" in source:
        try:
            location = parse_uri(require(source, "uri", where, str))
        except ValueError as error:
            raise ChatmillError(f"params.yaml: {where}.uri {error}") from None
    for key in DATASET_KEYS:
        if key not in source:
            continue
        if location is not None and not isinstance(location, HubDataset):
            raise ChatmillError(
                f"params.yaml: {where}.{key} applies to a whole Hub dataset only "
                "(uri hf://datasets/OWNER/NAME[@REV]); remove it, or point uri at the dataset"
            )
        value = source[key]
        if not isinstance(value, str) or not value.strip():
            raise ChatmillError(
                f"params.yaml: {where}.{key} must be the name of a dataset {key}, got {value!r}"
            )
    if "format" in source:
        # Which formats exist is chatmill.records' to say (clean checks it): fetch needs no parser.
        require(source, "format", where, str)
    if "trim" in source:
        require(source, "trim", where, bool)
    if "weight" in source:
        # Not `require(..., (int, float))`: it would let a bool through as a number.
        weight = source["weight"]
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ChatmillError(f"params.yaml: {where}.weight must be a number >= 0, got {weight!r}")
    sha256 = source.get("sha256")
    if sha256 is not None and isinstance(location, HubDataset):
        # The rows fetch writes are no file of the repo: a commit is what pins a dataset.
        raise ChatmillError(
            f"params.yaml: {where}.sha256 checks one file; pin a whole dataset by a commit in its uri "
            "instead (hf://datasets/OWNER/NAME@COMMIT; data/raw/manifest.json records the commit fetched)"
        )
    if sha256 is not None and not (isinstance(sha256, str) and SHA256.fullmatch(sha256)):
        raise ChatmillError(f"params.yaml: {where}.sha256 must be 64 hex characters, got {sha256!r}")
    return {**source, "sha256": sha256.lower() if sha256 else None}
