"""length-trim: data/clean -> data/trimmed. Conversations whose median bot reply is short are
dropped with a probability that falls along trim.curve (the logbook's central idea); sources with
`trim: false` pass untouched. Writes stats.json and the before/after histogram for `dvc plots`."""

from chatmill.errors import exit_on_error
from chatmill.layout import CLEAN_DIR, CONVERSATIONS, LENGTH_TRIM_PLOT, TRIMMED_DIR
from chatmill.params import stage_params
from chatmill.sources import validate_sources
from chatmill.trim import trim_file, validate_trim


@exit_on_error
def main() -> None:
    params = stage_params("length-trim")
    sources = validate_sources(params["sources"], needed=("trim",))
    trimmed = {name: source["trim"] for name, source in sources.items()}
    trim_file(
        CLEAN_DIR / CONVERSATIONS, TRIMMED_DIR, LENGTH_TRIM_PLOT, validate_trim(params["trim"]), trimmed
    )


if __name__ == "__main__":
    main()
