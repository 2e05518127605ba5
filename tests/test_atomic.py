"""Atomic writes: an interrupted write keeps the previous result, leaves nothing that looks complete, and no litter."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import make_inputs, make_model

from hf_prune import layer_shapes, load_pruned, prune_model
from hf_prune.serialization.atomic import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text
from hf_prune.serialization.saving import save_pruned


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def tree(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Interrupt(KeyboardInterrupt):
    pass


# ----------------------------------------------------------------------------- files


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "plan.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    atomic_write_text(target, "second")
    assert target.read_text() == "second" and names(target.parent) == ["plan.json"]


@pytest.mark.parametrize("failure", [Interrupt, OSError])
def test_interrupted_file_write_keeps_the_old_file(tmp_path, monkeypatch, failure):
    target = tmp_path / "scores.json"
    target.write_text("old")

    def broken_fsync(fd):
        raise failure("interrupted")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # after the data is written, before the rename
    with pytest.raises(failure):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_text() == "old" and names(tmp_path) == ["scores.json"]


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "weights").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


def test_writing_onto_a_folder_fails_cleanly(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "taken", "x")
    assert names(tmp_path) == ["taken"]


# ----------------------------------------------------------------------------- folders


def test_folder_replaces_the_previous_one_completely(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "b.txt").write_text("2")
    assert tree(target) == {"a.txt": b"1", "nested/b.txt": b"2"}
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert tree(target) == {"c.txt": b"3"}  # no stale files from the previous result
    assert names(tmp_path) == ["out"]


def test_overwrite_false_refuses_a_non_empty_folder_before_writing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    entered = []
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_directory(target) as tmp:
            entered.append(tmp)
    assert not entered and tree(target) == {"keep.txt": b"mine"} and names(tmp_path) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        with atomic_directory(tmp_path / "file", overwrite=True):
            pass


def test_an_empty_existing_folder_may_be_filled(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
    assert tree(tmp_path / "out") == {"x": b"1"} and names(tmp_path) == ["out"]


@pytest.mark.parametrize("failure", [Interrupt, RuntimeError])
def test_failure_inside_the_block_keeps_the_previous_folder(tmp_path, failure):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(failure):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise failure("stop")
    assert tree(target) == {"old.txt": b"old"} and names(tmp_path) == ["out"]


def test_failure_during_the_swap_puts_the_previous_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "old.txt").write_text("old")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the previous folder is already aside; the new one is not in place yet
            raise Interrupt("killed mid-swap")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Interrupt):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert tree(target) == {"old.txt": b"old"} and names(tmp_path) == ["out"]


def test_killed_writer_leaves_the_previous_folder_and_only_a_hidden_temp(tmp_path):
    """SIGKILL runs no cleanup: what is left must be the old folder plus a hidden `.out.*.tmp`, never a fake result."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    script = textwrap.dedent(f"""
        import os, signal
        from hf_prune.serialization.atomic import atomic_directory
        with atomic_directory({str(target)!r}, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == -signal.SIGKILL
    assert tree(target) == {"old.txt": b"old"}
    leftovers = [n for n in names(tmp_path) if n != "out"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.") and leftovers[0].endswith(".tmp")


# ----------------------------------------------------------------------------- save_pruned


def pruned_bert():
    model = make_model("bert")
    return prune_model(model, heads={0: [1, 2]}, neurons={2: [0, 5, 9]})


def test_save_pruned_writes_a_folder_load_pruned_reads(tmp_path):
    model = pruned_bert()
    folder = save_pruned(model, tmp_path / "model")
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    loaded = load_pruned(folder)
    assert layer_shapes(loaded) == layer_shapes(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**make_inputs()).logits, model(**make_inputs()).logits, atol=0, rtol=0)
    assert names(tmp_path) == ["model"]


def test_save_pruned_refuses_to_overwrite_unless_asked(tmp_path):
    model = pruned_bert()
    save_pruned(model, tmp_path / "model")
    before = tree(tmp_path / "model")
    with pytest.raises(FileExistsError):
        save_pruned(model, tmp_path / "model")
    assert tree(tmp_path / "model") == before
    prune_model(model, neurons={0: [1]})
    save_pruned(model, tmp_path / "model", overwrite=True)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["hf_prune"]["ffn"][0] == 36


def test_save_pruned_also_writes_the_tokenizer(tmp_path):
    class Tokenizer:
        def save_pretrained(self, folder):
            (folder / "tokenizer.json").write_text("{}")

    save_pruned(pruned_bert(), tmp_path / "model", tokenizer=Tokenizer())
    assert (tmp_path / "model" / "tokenizer.json").exists()


@pytest.mark.parametrize("where", ["model", "tokenizer"])
def test_interrupted_save_pruned_leaves_the_previous_folder_intact(tmp_path, monkeypatch, where):
    model = pruned_bert()
    save_pruned(model, tmp_path / "model")
    before = tree(tmp_path / "model")
    real_save = type(model).save_pretrained

    def save_then_die(self, folder, **kwargs):
        real_save(self, folder, **kwargs)
        (folder / "model.safetensors").write_bytes(b"truncated")  # half-written weights ...
        raise Interrupt("Ctrl-C")  # ... then the process is interrupted

    class DyingTokenizer:
        def save_pretrained(self, folder):
            (folder / "tokenizer.json").write_text("{")
            raise Interrupt("Ctrl-C")

    tokenizer = None
    if where == "model":
        monkeypatch.setattr(type(model), "save_pretrained", save_then_die)
    else:
        tokenizer = DyingTokenizer()
    prune_model(model, heads={1: [0]})
    with pytest.raises(Interrupt):
        save_pruned(model, tmp_path / "model", tokenizer=tokenizer, overwrite=True)
    assert tree(tmp_path / "model") == before
    assert names(tmp_path) == ["model"]  # no temp folder left next to it
    assert layer_shapes(load_pruned(tmp_path / "model"))[1].heads == 4


def test_save_pruned_rejects_non_models(tmp_path):
    with pytest.raises(ValueError, match="save_pretrained"):
        save_pruned(torch.nn.Linear(2, 2), tmp_path / "x")
    assert names(tmp_path) == []
