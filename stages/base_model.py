"""base-model: models/base, the tokenizer and model every training part starts from (HF format).
`model.base: scratch` trains a byte-level BPE tokenizer on data/clean (so every trim experiment
shares one tokenizer and one initial model) and initialises a small Llama from `model.scratch`;
otherwise `model.base` is a Hub id or local folder, loaded at `model.revision`. The tokenizer is
made `prompt.format`'s: its markers as special tokens, the format recorded, its chat template."""

from chatmill.errors import exit_on_error
from chatmill.layout import BASE_DIR, CLEAN_DIR, CONVERSATIONS
from chatmill.modeling import build_base, save_base
from chatmill.params import stage_params
from chatmill.prompt import validate_format


@exit_on_error
def main() -> None:
    params = stage_params("base-model")
    model_params = params["model"]
    tokenizer, model = build_base(model_params, CLEAN_DIR / CONVERSATIONS, validate_format(params["prompt"]))
    save_base(tokenizer, model, BASE_DIR)
    print(
        f"base-model: {model_params['base']} with {model.num_parameters():,} parameters, "
        f"vocabulary {len(tokenizer)}, prompt.format {params['prompt']['format']}"
    )


if __name__ == "__main__":
    main()
