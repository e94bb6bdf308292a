"""mix: data/trimmed -> data/mixed. Each source makes up its `weight` share of the mixed set
(mix.by: of conversations or of tokens); the set is as large as its input, sources above their
share down-sampled and those below it up-sampled (at most mix.max_repeat copies of a conversation),
then shuffled; the share a source cannot fill, or an empty source's (mix.on_empty), goes to the others
by weight, with a warning line. Which conversations are taken and the order are pure functions of
(mix.seed, conversation id). stats.json gives the composition and the warnings."""

from chatmill.errors import exit_on_error
from chatmill.layout import BASE_DIR, CONVERSATIONS, MIXED_DIR, TRIMMED_DIR
from chatmill.mix import mix_file
from chatmill.params import stage_params
from chatmill.sources import validate_sources


@exit_on_error
def main() -> None:
    params = stage_params("mix")
    sources = validate_sources(params["sources"], needed=("weight",))
    weights = {name: float(source["weight"]) for name, source in sources.items()}
    # prompt.format is declared (and read) when mix.by is tokens: tokens as the format writes them
    mix_file(TRIMMED_DIR / CONVERSATIONS, MIXED_DIR, weights, params["mix"], BASE_DIR, params.get("prompt"))


if __name__ == "__main__":
    main()
