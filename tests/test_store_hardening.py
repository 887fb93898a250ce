"""The activation cache under hostile-but-honest use: containment, integrity of every file,
unreadable metadata, orphaned writers, eviction racing readers, and the small faults."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash

from workbench.cli import main
from workbench.data import TextDataset
from workbench.errors import WorkbenchError
from workbench.models import load_model, resid_hook
from workbench.store import STALE_SECONDS, TOKENS_FILE, ActivationStore

TEXTS = ["the cat sat on the mat", "a dog", "paris is the capital of france and a big city",
         "one two three four five", "red blue green"]
READER = Path(__file__).with_name("_store_reader.py")


@pytest.fixture()
def tiny(tiny_llama_dir):
    return load_model(str(tiny_llama_dir))


def _rewrite_meta(entry_path: Path, edit) -> None:
    """Edit meta.json *and* refresh its checksum, as a careful attacker would."""
    meta = json.loads((entry_path / "meta.json").read_text())
    edit(meta)
    raw = json.dumps(meta).encode()
    (entry_path / "meta.json").write_bytes(raw)
    (entry_path / "meta.xxh3").write_text(xxhash.xxh3_64(raw).hexdigest())


def test_eviction_never_deletes_outside_the_cache(tiny, tmp_path):
    root = tmp_path / "a" / "b" / "acts"
    victim = tmp_path / "a" / "victim"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    store = ActivationStore(root=root)
    entry = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS))
    entry.close()
    _rewrite_meta(entry.path, lambda m: m.update(key="../../victim"))
    store.max_bytes = 0
    store.evict()
    store.clear()
    assert (victim / "precious.txt").read_text() == "keep me"
    with pytest.raises(WorkbenchError, match="not a cache key"):
        store.open("../../victim")
    with pytest.raises(WorkbenchError, match="not a cache key"):
        store.remove("../victim")


def test_a_folder_the_store_does_not_own_is_never_listed_or_deleted(tiny, tmp_path):
    store = ActivationStore(root=tmp_path / "acts")
    foreign = store.root / "my-notes"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    store.get_or_extract(tiny, TextDataset.from_texts(TEXTS)).close()
    store.max_bytes = 0
    store.evict(), store.clear(), store.clean()
    assert (foreign / "x.txt").exists()
    assert "my-notes" not in {r["folder"] for r in store.listing()}


@pytest.mark.parametrize("damage", ["truncate_tokens", "edit_lengths", "edit_meta", "flip_token_byte"])
def test_every_file_is_covered_by_a_checksum(tiny, tmp_path, damage):
    root = tmp_path / "acts"
    store = ActivationStore(root=root)
    ds = TextDataset.from_texts(TEXTS)
    entry = store.get_or_extract(tiny, ds)
    reference = entry.tokens(resid_hook(1)).copy()
    ids = [entry.token_ids(i).tolist() for i in range(entry.n_texts)]
    path = entry.path
    entry.close()
    tokens = path / TOKENS_FILE
    if damage == "truncate_tokens":
        tokens.write_bytes(tokens.read_bytes()[: tokens.stat().st_size // 2])
    elif damage == "flip_token_byte":
        data = bytearray(tokens.read_bytes())
        data[-3] ^= 0x01
        tokens.write_bytes(bytes(data))
    elif damage == "edit_lengths":  # shift a token from text 0 to text 1, same total
        from workbench.store import memmap_safetensors, write_safetensors_parts

        arrays = {k: np.array(v) for k, v in memmap_safetensors(tokens).items()}
        arrays["lengths"][0] -= 1
        arrays["lengths"][1] += 1
        write_safetensors_parts(tokens, {k: [v] for k, v in arrays.items()})
    else:
        meta = json.loads((path / "meta.json").read_text())
        meta["n_texts"] = 4
        (path / "meta.json").write_text(json.dumps(meta))  # checksum not refreshed
    fresh = ActivationStore(root=root)
    assert fresh.verify(path.name) is not None
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = fresh.get_or_extract(tiny, ds)
    assert rebuilt.extracted
    np.testing.assert_array_equal(rebuilt.tokens(resid_hook(1)), reference)
    assert [rebuilt.token_ids(i).tolist() for i in range(rebuilt.n_texts)] == ids


def test_empty_meta_is_reported_not_a_crash(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    store = ActivationStore()
    ds = TextDataset.from_texts(TEXTS)
    entry = store.get_or_extract(tiny, ds)
    entry.close()
    (entry.path / "meta.json").write_text("{}")
    main(["cache", "ls"])
    out = capsys.readouterr().out
    assert "corrupt" in out and entry.key in out
    with pytest.raises(SystemExit) as exc:
        main(["cache", "verify"])
    assert exc.value.code == 1 and "CORRUPT" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="corrupt"):
        again = store.get_or_extract(tiny, ds)
    assert again.extracted


def test_orphans_are_listed_counted_and_cleaned(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    store = ActivationStore()
    store.get_or_extract(tiny, TextDataset.from_texts(TEXTS)).close()
    orphan = store.root / f".tmp-{'ab' * 16}-999999-deadbeef"
    orphan.mkdir()
    (orphan / "shard_00000.safetensors").write_bytes(b"\0" * 50_000)
    rows = {r["folder"]: r for r in store.listing()}
    assert rows[orphan.name]["state"] == "orphan" and rows[orphan.name]["bytes"] == 50_000
    assert store.total_bytes() >= 50_000 + sum(r["bytes"] for r in store.entries())
    main(["cache", "ls"])
    assert "orphan" in capsys.readouterr().out
    # a write removes it only once it is stale (texts that are no prefix of the first entry's: a write)
    store.get_or_extract(tiny, TextDataset.from_texts(TEXTS[1:3])).close()
    assert orphan.exists()
    old = time.time() - STALE_SECONDS - 10
    os.utime(orphan, (old, old))
    store.get_or_extract(tiny, TextDataset.from_texts(TEXTS[1:4])).close()
    assert not orphan.exists()
    orphan.mkdir()
    main(["cache", "clean"])
    assert not orphan.exists() and "1 orphaned" in capsys.readouterr().out


def test_eviction_never_pulls_an_entry_from_under_a_reader(tiny, tmp_path):
    root = tmp_path / "acts"
    store = ActivationStore(root=root)
    entry = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS))
    key, expected = entry.key, sum(float(entry.tokens(h).sum()) for h in entry.hooks)
    entry.close()
    ready, go, out = tmp_path / "ready", tmp_path / "go", tmp_path / "out.json"
    proc = subprocess.Popen([sys.executable, str(READER), str(root), key, str(ready), str(go), str(out)])
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    other = ActivationStore(root=root, max_bytes=0)
    assert other.evict() == []  # the reader holds it
    with pytest.raises(WorkbenchError, match="open in a running process"):
        other.remove(key)
    assert (root / key).exists()
    go.touch()
    assert proc.wait(timeout=60) == 0
    assert json.loads(out.read_text())["total"] == pytest.approx(expected)
    assert other.evict() == [key]  # the reader is gone
    assert not (root / key).exists()


def test_waiting_process_reports_a_cache_hit(tiny, store):
    ds = TextDataset.from_texts(TEXTS)
    first = store.get_or_extract(tiny, ds)
    second = store.get_or_extract(tiny, ds)
    assert first.extracted and not second.extracted


def _cli_error(args, capsys, env=None, monkeypatch=None):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_small_faults_give_one_clear_line(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("WORKBENCH_CACHE", str(blocker / "cache"))
    data = tmp_path / "t.txt"
    data.write_text("the cat sat\n")
    line = _cli_error(["extract", "--model", str(tiny_llama_dir), "--data", str(data)], capsys)
    assert "WORKBENCH_CACHE" in line
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WORKBENCH_CACHE_MAX_GB", "abc")
    line = _cli_error(["cache", "ls"], capsys)
    assert "WORKBENCH_CACHE_MAX_GB" in line and "abc" in line
    monkeypatch.delenv("WORKBENCH_CACHE_MAX_GB")
    out_file = tmp_path / "out-is-a-file"
    out_file.write_text("x")
    line = _cli_error(["run", "layer_stats", "--model", str(tiny_llama_dir), "--data", str(data), "--out",
                       str(out_file)], capsys)
    assert "--out" in line and "file" in line
    line = _cli_error(["extract", "--model", str(tiny_llama_dir), "--data", str(data), "--batch-size", "0"], capsys)
    assert "--batch-size" in line
    line = _cli_error(["extract", "--model", str(tiny_llama_dir), "--data", str(data), "--prepend-bos", "maybe"],
                      capsys)
    assert "--prepend-bos" in line


def test_read_only_cache_is_one_clear_error(tiny, tmp_path, monkeypatch):
    store = ActivationStore(root=tmp_path / "acts")
    # as root permissions do not bind, so the check itself is made to see a read-only folder
    monkeypatch.setattr("workbench.store.cache.os.access", lambda path, mode: False)
    with pytest.raises(WorkbenchError, match="not writable"):
        store.get_or_extract(tiny, TextDataset.from_texts(TEXTS))
    monkeypatch.undo()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("workbench.store.files.write_safetensors_parts", full_disk)
    with pytest.raises(WorkbenchError, match="No space left"):
        store.get_or_extract(tiny, TextDataset.from_texts(TEXTS))
    assert store.listing() == []  # nothing half-written is left


def test_cli_says_truncation_once_on_stdout(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """`extract` and `run` each print one truncation line naming the fix, hit or miss, and no raw Python
    warning with its source line on stderr."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "t.txt"
    data.write_text("the cat sat on the mat and the dog sat on a big red mat\nthe cat\n")
    for _ in ("miss", "hit"):
        main(["extract", "--model", str(tiny_llama_dir), "--data", str(data), "--max-length", "4"])
        out, err = capsys.readouterr()
        assert [line for line in out.splitlines() if "truncated" in line] == [
            "  warning: 1 of 2 texts were longer than 4 tokens and were truncated (raise --max-length, up to the "
            "model's 64)."], out
        assert "Warning" not in err, err
    main(["run", "layer_stats", "--model", str(tiny_llama_dir), "--data", str(data), "--set", "max_length=3",
          "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if "truncated" in line]) == 1 and "Warning" not in err, (out, err)


def test_cli_commands_without_their_own_line_show_truncation_on_one_line(tiny_llama_dir, tmp_path):
    """`train-lens` (like train-sae, batch and compare) prints no truncation line of its own, so the store's
    warning is shown, as one `warning: ...` line without Python's source line. A fresh process, as a user
    runs it: pytest's own warning capture would hide what the CLI prints."""
    import os
    import subprocess
    import sys

    data = tmp_path / "t.txt"
    data.write_text("\n".join(["the cat sat on the mat and the dog sat on a big red mat"] * 6 + ["the cat"] * 2) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "train-lens", "--model", str(tiny_llama_dir), "--data", str(data),
         "--max-length", "4", "--steps", "2", "--positions-per-step", "4", "--heldout-data", "", "--heldout-texts", "2",
         "--out", str(tmp_path / "lens")],
        capture_output=True, text=True, env={**os.environ, "WORKBENCH_CACHE": str(tmp_path / "cache")}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "truncated" in line]
    assert lines == ["warning: 6 of 8 texts were longer than 4 tokens and were truncated (raise max_length, up to "
                     "the model's 64)."], proc.stderr[-2000:]
    assert "warnings.warn(" not in proc.stderr and "TruncationWarning" not in proc.stderr, proc.stderr[-2000:]
