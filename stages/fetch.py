"""fetch: every source of params.yaml into data/raw/NAME/<file name>, plus data/raw/manifest.json
(uri, bytes, sha256 of each file; for a whole Hub dataset also the commit, config, split and rows).
Local files are copied, http(s) URLs streamed, hf://datasets/... files downloaded through the Hugging
Face cache and checked against their sha256 when given; a whole Hub dataset's split is loaded through
`datasets` at the commit its revision resolves to and written to data/raw/NAME/SPLIT.parquet."""

from chatmill.errors import exit_on_error
from chatmill.fetch import fetch_all, fetch_progress
from chatmill.layout import RAW_DIR
from chatmill.params import stage_params
from chatmill.sources import validate_sources


@exit_on_error
def main() -> None:
    sources = validate_sources(stage_params("fetch")["sources"], needed=("uri",))
    with fetch_progress() as progress:
        manifest = fetch_all(sources, RAW_DIR, progress)
    for name, entry in manifest.items():
        rows = f"{entry['rows']} rows at commit {entry['commit']}, " if "commit" in entry else ""
        size = f"{entry['bytes']} bytes, sha256 {entry['sha256']}"
        print(f"fetch: {name}: {RAW_DIR}/{entry['file']} ({rows}{size})")


if __name__ == "__main__":
    main()
