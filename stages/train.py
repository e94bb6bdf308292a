"""train-partN: one part of training through DeepSpeed, continuing exactly where part N-1 stopped.

    python stages/train.py --part N

Reads data/shards/part-NN and data/shards/eval, and models/part-(N-1) (models/base for part 1).
Writes models/part-NN/ (HF safetensors + tokenizer, resume/, train_state.json) and DVCLive logs in
dvclive/part-NN/. With train.gpus above 1 or a train.hostfile it re-launches itself through the
DeepSpeed launcher; a killed part resumes from its newest checkpoint in checkpoints/part-NN/.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.params import stage_params, stage_settings
from chatmill.training import (
    SETTING_KEYS,
    launch_command,
    single_process_environment,
    train_part,
    validate_train,
)


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
    command = launch_command(train, part, Path(__file__))
    if command:
        if shutil.which("deepspeed") is None:
            raise ChatmillError("train: the `deepspeed` launcher is not on PATH; activate .venv")
        sys.exit(subprocess.call(command))
    single_process_environment(train["gpus"])
    state = train_part(part, train)
    print(
        f"train-part{part}: global step {state['global_step']}, {state['tokens_seen']:,} tokens seen, "
        f"loss {state['loss_first']} -> {state['loss_last']}, held-out loss {state['eval_loss']}"
    )


if __name__ == "__main__":
    main()
