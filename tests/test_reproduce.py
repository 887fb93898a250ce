"""`workbench reproduce` reuses a finished job only when both its command and the working tree it was made
from are unchanged: a README table must never be rendered from a result of older code or data."""

import json
import shutil
import subprocess

import pytest

from workbench.reproduce import run_job, tree_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("results/\n")
    (root / "lens.safetensors").write_bytes(b"\x00weights-v1")
    (root / "README.md").write_text("# tables\n")
    return root


def test_tree_state_follows_file_contents_not_markdown_or_ignored_files(tmp_path):
    root = _repo(tmp_path)
    first = tree_state(root)
    assert first is not None and tree_state(root) == first
    (root / "README.md").write_text("# tables, regenerated\n")
    (root / "results").mkdir()
    (root / "results" / "out.parquet").write_bytes(b"anything")
    assert tree_state(root) == first  # the README the tables go into, and ignored outputs
    (root / "lens.safetensors").write_bytes(b"\x00weights-v2")  # same size, other bytes
    changed = tree_state(root)
    assert changed != first
    (root / "new_module.py").write_text("x = 1\n")  # untracked but not ignored counts
    assert tree_state(root) != changed
    assert not (root / ".git" / "index").exists()  # read-only: nothing was staged
    assert tree_state(tmp_path / "not-a-repo-dir-that-does-not-exist") is None


def test_run_job_reuses_only_the_same_command_from_the_same_tree(tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    command = "workbench reproduce --list"
    (out / "manifest.json").write_text("{}")
    (out / "reproduce.json").write_text(json.dumps({"command": command, "tree_state": "aaa"}))
    assert run_job(command, out, state="aaa") == (out, True)
    # another tree: the job runs again (a cheap real command) and records the new state
    assert run_job(command, out, state="bbb") == (out, False)
    assert json.loads((out / "reproduce.json").read_text())["tree_state"] == "bbb"
    assert run_job(command, out, state="bbb") == (out, True)
    assert run_job(command, out, state="bbb", force=True) == (out, False)
