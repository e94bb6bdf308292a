"""Fetching sources into a raw folder: RAW/NAME/<file name> for every source, plus manifest.json.

A source is a repo-relative path (copied), an http(s):// URL (streamed), an hf://datasets/... file
(downloaded through the Hugging Face cache, then copied) or a whole Hub dataset: its revision resolved
to a commit, one split of one config loaded at that commit through the `datasets` library, and its
rows written as they are to RAW/NAME/SPLIT.parquet (clean parses them as any other file, so a
malformed row is quarantined with its reason). Each file is hashed as it is written and checked
against `sha256` when the source gives one. The raw folder is replaced as a whole and only once every
source has arrived, so a failed or killed run leaves the previous output as it was.
"""

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pyarrow.parquet as pq
from huggingface_hub import HfApi, hf_hub_download
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from chatmill.errors import ChatmillError
from chatmill.io import atomic_dir, sha256_file, write_json
from chatmill.sources import DEFAULT_SPLIT, HttpUrl, HubDataset, HubFile, LocalPath, parse_uri

if TYPE_CHECKING:  # datasets takes a second or two to import: only a Hub dataset source needs it
    from datasets import Dataset

CHUNK = 1 << 20
DATASET_BATCH = 10_000  # rows per Arrow batch written from a loaded dataset: memory stays flat
HTTP_TIMEOUT_S = 60  # per socket operation: a stalled server fails the run instead of hanging it


def read_chunks(reader: BinaryIO) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK):
        yield chunk


def write_verified(
    chunks: Iterable[bytes], destination: Path, expected_sha256: str | None, source: str
) -> tuple[int, str]:
    """Write the chunks to `destination`, hashing on the way; return (bytes, sha256).

    The file only takes its real name once complete and verified: an interrupted transfer or a hash
    mismatch leaves nothing behind.
    """
    temporary = destination.with_name(f".{destination.name}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(temporary, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise ChatmillError(
                f"fetch: source '{source}': sha256 mismatch: expected {expected_sha256}, got {actual}"
                f" (the file changed, or sources.{source}.sha256 in params.yaml is wrong)"
            )
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.rename(destination)
    return size, actual


def copy_local(path: str, destination: Path, expected_sha256: str | None, source: str) -> tuple[int, str]:
    """Copy a repo-relative file (the stage runs from the repository root)."""
    try:
        reader = open(path, "rb")
    except FileNotFoundError:
        raise ChatmillError(
            f"fetch: source '{source}': {path} not found (check sources.{source}.uri in params.yaml)"
        ) from None
    except OSError as error:  # a directory, no permission, ...
        raise ChatmillError(f"fetch: source '{source}': cannot read {path}: {error.strerror}") from None
    with reader:
        return write_verified(read_chunks(reader), destination, expected_sha256, source)


def download_url(
    url: str, destination: Path, expected_sha256: str | None, source: str, progress: Progress | None = None
) -> tuple[int, str]:
    """Stream an http(s) URL to `destination` in chunks, with a progress bar when given one."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length is not None else None
            chunks = _checked_length(read_chunks(response), expected_size, url, source)
            if progress is not None:
                task = progress.add_task(source, total=expected_size)
                chunks = _advancing(chunks, progress, task)
            return write_verified(chunks, destination, expected_sha256, source)
    except urllib.error.HTTPError as error:
        raise ChatmillError(
            f"fetch: source '{source}': GET {url} failed: HTTP {error.code} {error.reason}"
        ) from None
    except urllib.error.URLError as error:
        raise ChatmillError(f"fetch: source '{source}': cannot reach {url}: {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise ChatmillError(
            f"fetch: source '{source}': download of {url} failed: {type(error).__name__}: {error}; run again"
        ) from None


def _checked_length(
    chunks: Iterator[bytes], expected_size: int | None, url: str, source: str
) -> Iterator[bytes]:
    # urllib's read(n) reports a connection closed early as a normal end of file; the length tells them apart.
    received = 0
    for chunk in chunks:
        received += len(chunk)
        yield chunk
    if expected_size is not None and received != expected_size:
        raise ChatmillError(
            f"fetch: source '{source}': download of {url} stopped after {received} of {expected_size} bytes;"
            " run again"
        )


def _advancing(chunks: Iterator[bytes], progress: Progress, task: Any) -> Iterator[bytes]:
    for chunk in chunks:
        progress.advance(task, len(chunk))
        yield chunk


def download_hub(
    location: HubFile, destination: Path, expected_sha256: str | None, source: str
) -> tuple[int, str]:
    """Download a dataset file through the Hugging Face cache, then copy it out.

    The client picks up HF_TOKEN (and HF_ENDPOINT, HF_HUB_CACHE) from the environment by itself.
    """
    try:
        cached = hf_hub_download(
            repo_id=location.repo_id,
            repo_type="dataset",
            filename=location.path_in_repo,
            revision=location.revision,
        )
    except (OSError, ValueError) as error:
        raise ChatmillError(
            f"fetch: source '{source}': cannot download {location.path_in_repo} from dataset"
            f" {location.repo_id} at revision {location.revision}: {one_line(error)}"
        ) from None
    with open(cached, "rb") as reader:
        return write_verified(read_chunks(reader), destination, expected_sha256, source)


def one_line(error: BaseException) -> str:
    """A library's error on one line (Hub errors span several: status, url, request id)."""
    return " ".join(str(error).split())


def resolve_dataset_commit(location: HubDataset, source: str) -> str:
    """The commit the dataset's revision (a branch, tag or commit) points to now."""
    try:
        return HfApi().dataset_info(location.repo_id, revision=location.revision).sha
    except (OSError, ValueError) as error:  # not found, no access, no connection, offline mode
        raise ChatmillError(
            f"fetch: source '{source}': cannot find dataset {location.repo_id} at revision "
            f"{location.revision}: {one_line(error)}"
        ) from None


def load_dataset_rows(path: str, config: str | None, split: str, revision: str | None = None) -> "Dataset":
    """One split of one config (None: the dataset's default) of a dataset, as `datasets` loads it:
    a Hub dataset id (at `revision`), or a local folder laid out as a Hub dataset repo (its data files,
    and the configs its README.md declares)."""
    from datasets import load_dataset

    return load_dataset(path, name=config, split=split, revision=revision)


def write_dataset_rows(dataset: "Dataset", destination: Path) -> None:
    """The rows as they are, in Arrow batches, to one parquet file: written under a hidden name and
    renamed when complete."""
    temporary = destination.with_name(f".{destination.name}.part")
    try:
        with pq.ParquetWriter(temporary, dataset.features.arrow_schema) as writer:
            for batch in dataset.with_format("arrow").iter(batch_size=DATASET_BATCH):
                writer.write_table(batch)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.rename(destination)


def fetch_hub_dataset(
    location: HubDataset, source: dict[str, Any], folder: Path, name: str
) -> tuple[Path, dict[str, Any]]:
    """Load one split of a Hub dataset at the commit its revision resolves to now, write its rows to
    folder/SPLIT.parquet; return the file and what the manifest records of it."""
    from datasets.exceptions import DatasetsError  # here: importing datasets takes a second or two

    commit = resolve_dataset_commit(location, name)
    config, split = source.get("config"), source.get("split", DEFAULT_SPLIT)
    try:
        dataset = load_dataset_rows(location.repo_id, config, split, commit)
    except (OSError, ValueError, RuntimeError, DatasetsError) as error:
        # ValueError: an unknown or missing config or split; DatasetsError: data files missing or
        # unreadable as their format (the cause says why); RuntimeError: a loading script, which
        # datasets no longer runs (the Hub's parquet export, @refs%2Fconvert%2Fparquet, can be read).
        cause = f" ({one_line(error.__cause__)})" if error.__cause__ is not None else ""
        raise ChatmillError(
            f"fetch: source '{name}': cannot load split {split} of config {config or '(default)'} of "
            f"dataset {location.repo_id} at {commit}: {one_line(error)}{cause}; check sources.{name}"
        ) from None
    destination = folder / f"{split}.parquet"
    write_dataset_rows(dataset, destination)
    entry = {"revision": location.revision, "commit": commit, "config": dataset.config_name}
    return destination, {**entry, "split": split, "rows": dataset.num_rows}


def fetch_source(
    name: str, source: dict[str, Any], raw_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Materialise one validated source into raw_dir/NAME/; return its manifest entry."""
    location = parse_uri(source["uri"])
    folder = raw_dir / name
    folder.mkdir()
    expected = source.get("sha256")
    details: dict[str, Any] = {}
    if isinstance(location, HubDataset):
        destination, details = fetch_hub_dataset(location, source, folder, name)
        size, sha256 = destination.stat().st_size, sha256_file(destination)
    else:
        destination = folder / location.file_name
        match location:
            case LocalPath(path):
                size, sha256 = copy_local(path, destination, expected, name)
            case HttpUrl(url):
                size, sha256 = download_url(url, destination, expected, name, progress)
            case HubFile():
                size, sha256 = download_hub(location, destination, expected, name)
    return {
        "uri": source["uri"],
        "file": f"{name}/{destination.name}",
        "bytes": size,
        "sha256": sha256,
        **details,
    }


def fetch_progress() -> Progress:
    """The downloads' progress bars (local copies are too quick to show)."""
    columns = (TextColumn("fetch {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns, transient=True)


def fetch_all(
    sources: dict[str, dict[str, Any]], raw_dir: Path, progress: Progress | None = None
) -> dict[str, dict[str, Any]]:
    """Fetch every source (by name) into a fresh raw_dir with its manifest.json; return the manifest."""
    with atomic_dir(raw_dir) as staging:
        manifest = {name: fetch_source(name, sources[name], staging, progress) for name in sorted(sources)}
        write_json(staging / "manifest.json", manifest)
    return manifest
