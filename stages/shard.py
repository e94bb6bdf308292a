"""shard: data/mixed -> data/shards/part-01..NN and data/shards/eval: conversations in the training
prompt format (prompt.format, which models/base's tokenizer was prepared for), loss on the bot turns
only, cut into windows at turn boundaries and packed into shard.seq_len sequences (position ids
restart per window); train.parts parts of whole global batches. Output is byte-identical for any
shard.workers (0 = all cores)."""

from chatmill.errors import exit_on_error
from chatmill.io import worker_count
from chatmill.layout import BASE_DIR, CONVERSATIONS, MIXED_DIR, SHARDS_DIR
from chatmill.packing import build_shards
from chatmill.params import require, stage_params, stage_settings
from chatmill.prompt import validate_format


@exit_on_error
def main() -> None:
    params = stage_params("shard")
    parts = require(params["train"], "parts", "train", int)
    global_batch = require(params["train"], "global_batch", "train", int)
    workers = worker_count(stage_settings("shard.workers")["shard"]["workers"], "shard.workers")
    build_shards(
        MIXED_DIR / CONVERSATIONS,
        BASE_DIR,
        SHARDS_DIR,
        params["shard"],
        parts,
        global_batch,
        workers,
        validate_format(params["prompt"]),
    )


if __name__ == "__main__":
    main()
