"""train-partN: one part of training through DeepSpeed, continuing exactly where part N-1 stopped.

    python stages/train.py --part N

Reads data/shards/part-NN and data/shards/eval, and models/part-(N-1) (models/base for part 1).
Writes models/part-NN/ (HF safetensors + tokenizer, resume/, train_state.json) and DVCLive logs in
dvclive/part-NN/. With train.gpus above 1, train.cpu_ranks above 1 or a train.hostfile it launches
its ranks through the DeepSpeed launcher and waits for them; a killed part resumes from its newest
checkpoint in checkpoints/part-NN/.
"""

import argparse
import os
from pathlib import Path

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.layout import CHECKPOINTS_DIR, part_name
from chatmill.params import stage_params, stage_settings
from chatmill.ranks import (
    is_launched_rank,
    launch_command,
    recorded_rank,
    run_ranks,
    single_process_environment,
    use_environment_extensions,
)
from chatmill.training import SETTING_KEYS, newest_checkpoint, train_part, validate_train


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", type=int, required=True)
    part = parser.parse_args().part
    settings = stage_settings(*(f"train.{key}" for key in SETTING_KEYS))["train"]
    train = validate_train(stage_params(f"train-part{part}")["train"] | settings)
    if not 1 <= part <= train["parts"]:
        raise ChatmillError(
            f"train-part{part}: train.parts is {train['parts']}; part must be 1..{train['parts']}"
        )
    use_environment_extensions()
    checkpoints = CHECKPOINTS_DIR / part_name(part)
    command = launch_command(train, part, Path(__file__))
    if command:
        if not train["gpus"]:
            os.environ["DS_ACCELERATOR"] = "cpu"
        run_ranks(
            command,
            part,
            CHECKPOINTS_DIR / f"ranks-{part_name(part)}",
            lambda: newest_checkpoint(checkpoints),
        )
        return
    if is_launched_rank():
        with recorded_rank(int(os.environ["RANK"])):
            state = train_part(part, train)
    else:
        single_process_environment(train["gpus"])
        state = train_part(part, train)
    if int(os.environ["RANK"]) == 0:
        print(
            f"train-part{part}: global step {state['global_step']}, {state['tokens_seen']:,} tokens seen on "
            f"{state['world_size']} ranks, loss {state['loss_first']} -> {state['loss_last']}, "
            f"held-out loss {state['eval_loss']}"
        )


if __name__ == "__main__":
    main()
