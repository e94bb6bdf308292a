"""The processes of a training part: one, or several ranks through the DeepSpeed launcher.

train.gpus GPUs per node (and a train.hostfile for several nodes), or on a machine without GPUs
train.cpu_ranks CPU processes: the same code path as GPUs, with gloo in place of NCCL. The stage
process launches the ranks and waits; each rank records in a status file how it ended, so that when
the part fails the stage says in one line which rank failed first and where `dvc repro` resumes.
The launcher ends every rank when one fails.

DeepSpeed's JIT-built ops are cached in this environment (TORCH_EXTENSIONS_DIR under sys.prefix):
a cache shared by every environment on the machine is rebuilt whenever another environment used it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from chatmill.errors import ChatmillError
from chatmill.io import remove, write_json

RANKS_ENV = "CHATMILL_RANKS_DIR"  # where the launched ranks record how they ended
STALE_BUILD_S = 600  # a JIT build takes about a minute; a lock this old was left by a killed build


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_launched_rank() -> bool:
    """This process is a rank the launcher started (the launcher sets LOCAL_RANK)."""
    return os.environ.get("LOCAL_RANK") is not None and RANKS_ENV in os.environ


def launch_command(train: dict, part: int, script: Path) -> list[str] | None:
    """The DeepSpeed launcher command for several GPUs, CPU ranks or nodes; None to run in this
    process. The launched ranks find LOCAL_RANK in their environment (--no_local_rank: no extra
    argument); a free port, so that two runs on one machine do not meet."""
    gpus, hostfile, cpu_ranks = train["gpus"], train["hostfile"], train["cpu_ranks"]
    if os.environ.get("LOCAL_RANK") is not None:
        return None
    processes = gpus if gpus else cpu_ranks
    if processes <= 1 and not hostfile:
        return None
    # The launcher of this environment, found without .venv/bin on PATH.
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank", "--log_level", "warning"]
    command += ["--master_port", str(free_port())]
    if hostfile:
        command += ["--hostfile", str(hostfile)]
    if processes > 1:
        command += ["--num_gpus", str(processes)]
    return command + [str(script), "--part", str(part)]


def single_process_environment(gpus: int) -> None:
    """One process (train.gpus 0 or 1, no hostfile): torch.distributed still needs a rendezvous.
    train.gpus 0 trains on the CPU, through DeepSpeed's CPU accelerator, even where a GPU exists."""
    if "LOCAL_RANK" in os.environ:
        return
    if gpus:
        import torch

        if not torch.cuda.is_available():
            raise ChatmillError(f"params.yaml: train.gpus={gpus} but no GPU is visible; use train.gpus: 0")
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )
    if gpus == 0:
        os.environ["DS_ACCELERATOR"] = "cpu"


def cpu_threads(local_ranks: int) -> int:
    """Torch threads of each of `local_ranks` CPU ranks on this machine: the cores shared out, so
    that the ranks do not fight over them."""
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)


def use_environment_extensions() -> None:
    """DeepSpeed's JIT-built ops go to this environment's own cache, and a lock left there by a
    build that was killed midway (which would make every later process wait forever) is removed."""
    folder = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions")))
    for lock in folder.glob("*/*/lock") if folder.is_dir() else ():
        if time.time() - lock.stat().st_mtime > STALE_BUILD_S:
            print(f"train: removing {lock}, left by a DeepSpeed op build that was killed", file=sys.stderr)
            lock.unlink(missing_ok=True)


# --- How each rank ended ------------------------------------------------------------------------------


def status_file(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank:05d}.json"


@contextmanager
def recorded_rank(rank: int) -> Iterator[None]:
    """In a launched rank: record that it runs, and how it ends: done, failed with its error, or
    stopped by the launcher. A rank killed outright records nothing more than that it ran."""
    folder = Path(os.environ[RANKS_ENV])
    path = status_file(folder, rank)
    write_json(path, {"rank": rank, "pid": os.getpid(), "state": "running"})

    def stopped(signum: int, frame: object) -> None:  # the launcher ends the others when one fails
        write_json(path, {"rank": rank, "pid": os.getpid(), "state": "stopped", "time": time.time()})
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    try:
        yield
    except BaseException as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        write_json(
            path, {"rank": rank, "pid": os.getpid(), "state": "failed", "error": reason, "time": time.time()}
        )
        raise
    write_json(path, {"rank": rank, "pid": os.getpid(), "state": "done"})


# Errors a rank gets because another rank went away: a consequence, not the cause.
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "remote process exited", "Broken pipe")


def failed_rank(statuses: list[dict]) -> str:
    """Which rank failed first, from the ranks' records: one that failed with an error of its own
    (the earliest), else one that ended without a word (killed: a signal, or out of memory)."""
    own_errors = sorted(
        (s for s in statuses if s["state"] == "failed" and not any(lost in s["error"] for lost in LOST_PEER)),
        key=lambda s: s["time"],
    )
    if own_errors:
        return f"rank {own_errors[0]['rank']} failed: {own_errors[0]['error']}"
    silent = [str(s["rank"]) for s in statuses if s["state"] == "running"]
    if silent:
        return f"rank {', '.join(silent)} ended without an error of its own (killed, or out of memory)"
    return "a rank failed before it started (see the launcher's output above)"


def run_ranks(
    command: list[str], part: int, folder: Path, last_checkpoint: Callable[[], Path | None]
) -> None:
    """Launch the ranks and wait; a failure becomes one line naming the rank that failed first and
    the checkpoint `dvc repro` resumes from."""
    remove(folder)
    folder.mkdir(parents=True)
    status = subprocess.call(command, env={**os.environ, RANKS_ENV: str(folder)})
    if status == 0:
        remove(folder)
        return
    statuses = [json.loads(path.read_text()) for path in sorted(folder.glob("rank-*.json"))]
    checkpoint = last_checkpoint()
    where = (
        f"the last checkpoint is {checkpoint}: `dvc repro train-part{part}` resumes from it"
        if checkpoint
        else f"no checkpoint was written yet: `dvc repro train-part{part}` starts the part again"
    )
    raise ChatmillError(f"train-part{part}: {failed_rank(statuses)}; {where}")
