"""What every benchmark records beside its figures: the machine it ran on, and repeated timings
summarised as a median with its spread (the verdicts use the median), taken in rounds whose order
rotates."""

import os
import platform
import re
import statistics
from pathlib import Path

import torch


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def blas() -> str:
    """The BLAS torch was built with (MKL, OpenBLAS, ...), as torch's build settings name it."""
    found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def machine() -> dict:
    """CPU model, cores this process may use, torch threads, BLAS and versions."""
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "blas": blas(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def spread(values: list[float], digits: int = 2) -> dict:
    """Median, min and max of repeated measurements, and every repetition."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "repetitions": [round(value, digits) for value in values],
    }


def spread_text(summary: dict) -> str:
    """'6.62 (6.41–6.80)': the median and, in brackets, the range."""
    return f"{summary['median']:,} ({summary['min']:,}–{summary['max']:,})"


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """The order the runs take in each round: rotated by one each round, so every run goes first,
    second, ... equally often when rounds is a multiple of their number."""
    return [names[turn % len(names) :] + names[: turn % len(names)] for turn in range(rounds)]


def ratios(speeds: list[dict[str, float]], way: str, baseline: str) -> list[float]:
    """way's speed over baseline's in each round: two ways timed side by side, whatever the load."""
    return [round_speeds[way] / round_speeds[baseline] for round_speeds in speeds]
