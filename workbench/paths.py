"""Where the workbench keeps its files.

Everything the workbench writes (converted models, the activation cache, trained lenses) lives under
one folder: ``$WORKBENCH_CACHE`` if set, else ``~/.cache/workbench``. The project's own shipped data
lives in ``sample_data/`` beside the package.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = PROJECT_ROOT / "sample_data"


def cache_dir() -> Path:
    """The workbench's cache root (created on first use)."""
    root = Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from .errors import WorkbenchError

        raise WorkbenchError(f"Cannot use {root} as the workbench cache ({exc.strerror}): set WORKBENCH_CACHE to a "
                             "writable folder.") from exc
    return root


@contextmanager
def atomic_write(path: Path, mode: str = "w", **kwargs):
    """Write ``path`` through a temporary file in the same folder, renamed into place on success.

    A reader never sees a half-written file: either the old content, or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: Path, digest, chunk: int = 1 << 22) -> str:
    """Hex digest of a file read in chunks (bounded memory for multi-GB files); ``digest`` is a fresh
    hash object (``hashlib.sha256()``, ``xxhash.xxh3_64()``)."""
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file (model weights: their fingerprint)."""
    import hashlib

    return file_digest(path, hashlib.sha256())
