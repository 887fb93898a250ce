"""Regenerate the README's results tables from the shipped command line.

Each results table of the README is declared by the back-end it belongs to, as a :class:`ReadmeTable`
on its :class:`~workbench.analysis.AnalysisSpec` (``readme_tables``): the ``workbench run`` commands
that make it, and a function that renders their results as markdown. ``workbench reproduce`` (and
``make results``) runs every command in a fresh process into ``<out>/<table>/<job>/`` (result table,
figure, manifest), renders each table to ``<out>/<table>.md`` and, with ``--update-readme``, replaces
the block between the table's markers in README.md::

    <!-- results:NAME -->
    ... generated ...
    <!-- /results:NAME -->

A job whose output folder already holds a manifest made by the same command from the same working tree
(:func:`tree_state`: the content of every file git tracks or would track, shipped lenses and models
included) is reused, so an interrupted run resumes; a change to the code or the shipped data reruns
it, and ``--force`` reruns everything.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import WorkbenchError
from .paths import PROJECT_ROOT, atomic_write

README = PROJECT_ROOT / "README.md"


@dataclass(frozen=True)
class ReadmeTable:
    """One README results table: ``jobs`` maps a job name to its ``workbench ...`` command (no
    ``--out``); ``render(results)`` gets ``{job: Result}`` and returns markdown. ``minutes``: rough
    cost on the 2-core development machine, shown by ``workbench reproduce --list``."""

    name: str
    title: str
    jobs: dict[str, str]
    render: Callable[[dict], str]
    minutes: float = 1.0
    notes: str = ""
    env: dict = field(default_factory=dict)


def all_tables() -> dict[str, ReadmeTable]:
    from .analysis import list_analyses

    tables: dict[str, ReadmeTable] = {}
    for spec in list_analyses():
        for table in spec.readme_tables:
            if table.name in tables:
                raise RuntimeError(f"two README tables are named {table.name!r}")
            tables[table.name] = table
    return tables


def _job_argv(command: str, out: Path) -> list[str]:
    argv = shlex.split(command)
    if argv[:1] != ["workbench"]:
        raise RuntimeError(f"a README table command must start with 'workbench': {command!r}")
    return argv[1:] + ["--out", str(out)]


def tree_state(root: Path = PROJECT_ROOT) -> str | None:
    """sha256 over the paths and contents of the files of the working tree that git tracks or would
    track (``git ls-files --cached --others --exclude-standard``), markdown left out (the README these
    tables are written into must not invalidate them); read-only, nothing is written to ``.git``.
    ``None`` outside a git checkout (an installed package: its version is in the manifest)."""
    import hashlib

    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    digest = hashlib.sha256()
    for name in sorted(set(filter(None, listed.split(b"\0")))):
        if name.endswith(b".md"):
            continue
        path = root / name.decode()
        if not path.is_file():  # deleted but still in the index
            continue
        digest.update(name + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def run_job(command: str, out: Path, force: bool = False, env: dict | None = None,
            state: str | None = None) -> tuple[Path, bool]:
    """Run one command (fresh process) into ``out`` unless a manifest of the same command, made from
    the same working tree (``state``, :func:`tree_state`), is there.

    Returns ``(out, reused)``. The command and the tree state are recorded in ``out/reproduce.json``.
    """
    import os

    record = out / "reproduce.json"
    if not force and record.exists() and (out / "manifest.json").exists():
        try:
            made = json.loads(record.read_text())
            if made.get("command") == command and made.get("tree_state") == state:
                return out, True
        except ValueError:
            pass
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    argv = [sys.executable, "-m", "workbench.cli", *_job_argv(command, out)]
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise WorkbenchError(f"`{command}` failed (exit {proc.returncode}); its output is above.")
    with atomic_write(record) as handle:
        json.dump({"command": command, "tree_state": state, "seconds": round(time.time() - t0, 1),
                   "finished": time.time()}, handle)
    return out, False


def render_block(table: ReadmeTable, results: dict, out_root: Path) -> str:
    """The markdown between the README markers: the commands, then the rendered table."""
    from .results import Result

    loaded = {job: (r if isinstance(r, Result) else Result.load(r)) for job, r in results.items()}
    lines = [f"<!-- results:{table.name} -->",
             f"*Regenerate with `workbench reproduce {table.name}` (part of `make results`); made by:*", "",
             "```bash"]
    for job, command in table.jobs.items():
        lines.append(f"{command} --out {out_root.name}/{table.name}/{job}")
    lines += ["```", "", table.render(loaded).strip(), f"<!-- /results:{table.name} -->"]
    return "\n".join(lines)


def update_readme(blocks: dict[str, str], readme: Path = README) -> list[str]:
    """Replace each ``<!-- results:NAME -->`` block; returns the names that had no markers."""
    text = readme.read_text()
    missing = []
    for name, block in blocks.items():
        pattern = re.compile(rf"<!-- results:{re.escape(name)} -->.*?<!-- /results:{re.escape(name)} -->", re.S)
        if not pattern.search(text):
            missing.append(name)
            continue
        text = pattern.sub(lambda _m: block, text)
    with atomic_write(readme) as handle:
        handle.write(text)
    return missing


def reproduce(names: list[str] | None = None, out: str | Path = "results", force: bool = False,
              readme: Path | None = None, log=print) -> dict[str, str]:
    """Run the jobs of the named tables (default: all), render them; returns ``{name: markdown}``."""
    tables = all_tables()
    unknown = sorted(set(names or []) - set(tables))
    if unknown:
        raise WorkbenchError(f"No README table {unknown}; tables: {', '.join(sorted(tables))}.")
    out_root = Path(out)
    blocks = {}
    state = tree_state()
    for name in names or list(tables):
        table = tables[name]
        log(f"== {name}: {table.title} (about {table.minutes:g} min)")
        results = {}
        for job, command in table.jobs.items():
            folder, reused = run_job(command, out_root / name / job, force=force, env=table.env,
                                     state=state)
            log(f"   {job}: {'reused' if reused else 'ran'} {command}")
            results[job] = folder
        block = render_block(table, results, out_root)
        with atomic_write(out_root / f"{name}.md") as handle:
            handle.write(block + "\n")
        blocks[name] = block
    if readme is not None:
        missing = update_readme(blocks, readme)
        if missing:
            log(f"README has no markers for {missing}: add <!-- results:NAME --><!-- /results:NAME --> where they go.")
    return blocks


# ---- small rendering helpers shared by the back-ends' renderers ------------------------------
def md_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table."""
    def cell(v):
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits: int = 3) -> str:
    """A number with ``digits`` significant decimals; '' for None/NaN."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v != v:
        return ""
    return f"{v:.{digits}f}"
