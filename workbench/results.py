"""One result shape for every analysis, its manifest, and export.

A :class:`Result` is a tidy pandas table (one row per layer/position/head/..., one column per
quantity), the parameters, a JSON-able summary, and a manifest: model fingerprint, dataset hash,
parameters, seed, package versions, timings and the exact CLI command that reproduces it.

Export: self-contained HTML (plotly.js embedded, opens offline), PNG and SVG through kaleido (needs
Chrome/Chromium), CSV/parquet of the table, the manifest as JSON.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import platform
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import WorkbenchError
from .paths import atomic_write

VERSIONED_PACKAGES = ("workbench", "torch", "transformers", "transformer-lens", "numpy", "scikit-learn",
                      "umap-learn", "plotly", "pandas", "safetensors", "streamlit")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def cli_command(analysis: str, model: str | None, data: str | None, vectors: str | None,
                params: dict, defaults: dict, options: dict | None = None) -> str:
    """The `workbench run` command that reproduces a run (only non-default parameters are set;
    ``options`` adds flags such as ``--text-column`` when their value is not None)."""
    parts = ["workbench", "run", analysis]
    if model:
        parts += ["--model", model]
    if data:
        parts += ["--data", data]
    if vectors:
        parts += ["--vectors", vectors]
    for flag, value in (options or {}).items():
        for one in (value if isinstance(value, list) else [value]):  # a list repeats the flag
            if one is not None:
                parts += [flag, str(one)]
    parts += ["--out", "out/" + analysis]
    for key, value in params.items():
        if key in defaults and defaults[key] == value:
            continue
        parts += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return " ".join(shlex.quote(p) for p in parts)


def with_models(cli: str, models: list[str]) -> str:
    """A ``workbench run`` line with its ``--model`` replaced by one ``--model`` per name (an overlay)."""
    parts = shlex.split(cli)
    kept, i = [], 0
    while i < len(parts):
        if parts[i] == "--model":
            i += 2
            continue
        kept.append(parts[i])
        i += 1
    head, tail = kept[:3], kept[3:]  # workbench run ANALYSIS
    return " ".join(shlex.quote(p) for p in head + [x for m in models for x in ("--model", m)] + tail)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class Result:
    """What every analysis returns: ``table`` (tidy), ``params``, ``summary``, ``manifest``."""

    analysis: str
    table: pd.DataFrame
    params: dict
    summary: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def figure(self):
        """The analysis's default figure (plotly)."""
        from .registry import get_analysis

        return get_analysis(self.analysis).figure(self)

    # ---- export -----------------------------------------------------------------------------
    def manifest_json(self) -> str:
        return json.dumps(_jsonable(self.manifest), indent=2)

    def save(self, out_dir: str | Path, figure=None, static: bool = True) -> dict[str, Path]:
        """Write result.parquet, result.csv, figure.html (+ png/svg when Chromium is there), manifest.json.

        Returns the written paths; a missing Chromium is noted in the manifest (``static_export``),
        never an error, since the HTML figure is complete on its own.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        table = _parquet_safe(self.table)
        with atomic_write(out / "result.parquet", "wb") as handle:
            table.to_parquet(handle, index=False)
        paths["parquet"] = out / "result.parquet"
        with atomic_write(out / "result.csv") as handle:
            self.table.to_csv(handle, index=False)
        paths["csv"] = out / "result.csv"
        fig = figure if figure is not None else self.figure()
        with atomic_write(out / "figure.html") as handle:
            handle.write(figure_html(fig))
        paths["html"] = out / "figure.html"
        if static:
            try:
                for fmt, data in figure_images(fig, ("png", "svg")).items():
                    with atomic_write(out / f"figure.{fmt}", "wb") as handle:
                        handle.write(data)
                    paths[fmt] = out / f"figure.{fmt}"
                self.manifest["static_export"] = "png, svg"
            except WorkbenchError as exc:
                self.manifest["static_export"] = f"skipped: {exc}"
        with atomic_write(out / "manifest.json") as handle:
            handle.write(self.manifest_json())
        paths["manifest"] = out / "manifest.json"
        return paths

    @classmethod
    def load(cls, out_dir: str | Path) -> "Result":
        out = Path(out_dir)
        manifest = json.loads((out / "manifest.json").read_text())
        table = pd.read_parquet(out / "result.parquet")
        return cls(manifest["analysis"], table, manifest.get("params", {}), manifest.get("summary", {}), manifest)


def _parquet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding lists/dicts become JSON strings so parquet can store them."""
    table = table.copy()
    for col in table.columns:
        if table[col].dtype == object and table[col].map(lambda v: isinstance(v, (list, dict, tuple))).any():
            table[col] = table[col].map(lambda v: json.dumps(_jsonable(v)))
    return table


def figure_html(fig) -> str:
    """A self-contained HTML page (plotly.js embedded: opens with no network)."""
    return fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


#: seconds one static export may take before it is given up (a browser that never answers)
STATIC_EXPORT_TIMEOUT = 180


#: rendered static images kept (by content) under cache_dir()/figures; the oldest go beyond this
FIGURE_CACHE_FILES = 256


def figure_images(fig, formats=("png", "svg"), scale: float = 2.0) -> dict[str, bytes]:
    """Static images of one figure, by content: a figure rendered before (same JSON, format, scale,
    kaleido version) is read from ``cache_dir()/figures`` instead of starting a browser (about 2 s of
    a cached run); otherwise :func:`render_images`."""
    import hashlib

    from .paths import cache_dir

    folder = cache_dir() / "figures"
    renderer = [_version("kaleido"), _version("plotly"), chromium_path()]
    digest = hashlib.sha256(json.dumps([fig.to_json(), sorted(formats), scale, renderer]).encode()).hexdigest()
    paths = {fmt: folder / f"{digest[:32]}.{fmt}" for fmt in formats}
    if all(p.is_file() for p in paths.values()):
        return {fmt: p.read_bytes() for fmt, p in paths.items()}
    images = render_images(fig, formats, scale)
    folder.mkdir(parents=True, exist_ok=True)
    for fmt, data in images.items():
        tmp = paths[fmt].with_name(f".{paths[fmt].name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, paths[fmt])
    kept = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime)
    for stale in kept[:-FIGURE_CACHE_FILES]:
        stale.unlink(missing_ok=True)
    return images


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def render_images(fig, formats=("png", "svg"), scale: float = 2.0) -> dict[str, bytes]:
    """Static images of one figure through kaleido, one Chromium for every format.

    The browser keeps its profile, config and cache under ``cache_dir()/browser`` (not the user's
    home or /tmp), and runs on its own thread and event loop, so a browser that fails to start is an
    error, never a hang, and the call works where an event loop is already running (Jupyter).
    """
    import asyncio
    import concurrent.futures
    import os

    import kaleido

    for fmt in formats:
        if fmt not in {"png", "svg", "pdf"}:
            raise WorkbenchError(f"Static export format must be png, svg or pdf, got {fmt!r}")
    browser = chromium_path()
    if browser is None:
        raise WorkbenchError("PNG/SVG export needs Chrome or Chromium (kaleido drives it): install Debian's "
                             "`chromium` package (apt-get install chromium); HTML export works without it.")
    from .paths import cache_dir

    home = cache_dir() / "browser"
    # Chromium binds sockets under TMPDIR, and a socket path may not exceed 107 bytes: a deep cache
    # folder gets a short temporary one instead, removed afterwards
    scratch = home / "t" if len(str(home)) < 56 else Path(tempfile.mkdtemp(prefix="wb-chromium-"))
    env = {"BROWSER_PATH": browser, "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache"),
           "TMPDIR": str(scratch)}
    for folder in (home / "profiles", scratch):
        folder.mkdir(parents=True, exist_ok=True)

    async def render() -> dict[str, bytes]:
        async with kaleido.Kaleido(tmp_dir=str(home / "profiles")) as k:
            return {fmt: await k.calc_fig(fig, opts={"format": fmt, "scale": scale if fmt == "png" else 1})
                    for fmt in formats}

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, render()).result(timeout=STATIC_EXPORT_TIMEOUT)
    except Exception as exc:  # kaleido reports a missing/broken browser in several ways
        raise WorkbenchError(f"Static export through kaleido failed ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); HTML export still works.") from exc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(scratch, ignore_errors=True)  # what a crashed browser leaves there


def figure_image(fig, fmt: str, scale: float = 2.0) -> bytes:
    """PNG, SVG or PDF bytes of a figure (see :func:`figure_images`)."""
    return figure_images(fig, (fmt,), scale)[fmt]


def table_bytes(table: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "csv":
        return table.to_csv(index=False).encode()
    buffer = io.BytesIO()
    _parquet_safe(table).to_parquet(buffer, index=False)
    return buffer.getvalue()
