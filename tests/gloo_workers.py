"""Run a scoring function in two gloo processes (torch.multiprocessing.spawn), each on its shard of the batches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

TEMPLATE = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    sys.path.insert(0, {tests!r})


    def main(rank, world):
    {body}

    def run(rank, world):
        dist.init_process_group("gloo", init_method="file://{out}/store", rank=rank, world_size=world)
        torch.set_num_threads(1)
        main(rank, world)
        dist.destroy_process_group()


    if __name__ == "__main__":
        mp.spawn(run, args=(2,), nprocs=2)
    """
)


def run_two_processes(body: str, out: os.PathLike, timeout: int = 120) -> None:
    """Run `body` (the statements of `main(rank, world)`; `out` is the folder to write into) on two ranks."""
    tests = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(out, "worker.py")
    indented = textwrap.indent(textwrap.dedent(body).format(out=str(out)), "    ")
    with open(script, "w") as handle:
        handle.write(TEMPLATE.format(tests=tests, out=str(out), body=indented))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(tests), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
