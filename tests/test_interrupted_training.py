"""A prune-and-fine-tune run killed with SIGKILL resumes from its last checkpoint and ends like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "interrupt_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def start(out, mode, *extra):
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{mode}.log", "w")
    return subprocess.Popen([sys.executable, WORKER, str(out), mode, *extra], env=ENV, stdout=log,
                            stderr=subprocess.STDOUT)


def finish(process, out, mode, timeout=240):
    assert process.wait(timeout=timeout) == 0, (out / f"{mode}.log").read_text()[-3000:]
    return json.loads((out / f"result-{mode}.json").read_text())


def kill_when_paused(process, out, timeout=240):
    """Wait until the worker froze after its checkpoint, then SIGKILL it (no cleanup runs)."""
    deadline = time.monotonic() + timeout
    while not (out / "paused").exists():
        assert process.poll() is None, (out / "run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker never reached its pause point"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return finish(start(out, "run"), out, "run")


# pause after step 3: between pruning events 1 (step 2) and 2 (step 4), the model already compacted;
# pause after step 6: every event done, checkpoint-6 holds the final shapes, two training steps left
@pytest.mark.parametrize("pause_after", [3, 6])
def test_killed_run_resumes_to_the_same_shapes_and_plan(uninterrupted, tmp_path, pause_after):
    out = tmp_path / "killed"
    kill_when_paused(start(out, "run", "--pause-after", str(pause_after)), out)
    checkpoints = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints[-1] == f"checkpoint-{pause_after}" and not (out / "result-run.json").exists()

    resumed = finish(start(out, "resume"), out, "resume")
    assert resumed["resumed_from"] == f"checkpoint-{pause_after}"
    assert resumed["shapes"] == uninterrupted["shapes"]
    assert resumed["hf_prune"] == uninterrupted["hf_prune"]
    done = sum(step <= pause_after for step in (2, 4, 6))  # pruning events already in the checkpoint
    assert resumed["plans"] == uninterrupted["plans"][done:]  # the same units are chosen after the restart
    assert [e["hf_prune/heads"] for e in resumed["events"]] == [e["hf_prune/heads"] for e in uninterrupted["events"]]
    assert resumed["logits"] == pytest.approx(uninterrupted["logits"], abs=1e-4)
