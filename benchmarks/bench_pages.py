"""Time to first figure of every analysis page with its default settings, driven through AppTest.

For each page (``app_pages/1..98``; not Home, not the Cache tool) a fresh process:

1. renders the page once with ``ui.run`` stubbed out, to learn the page's default model (the
   sidebar's own choice on a fresh session), then loads that model through ``ui.get_model`` (the
   page's ``st.cache_resource``): *load s*, timed apart from the rest;
2. **cold**: an empty activation cache (``WORKBENCH_CACHE`` = a scratch folder with the converted
   built-in models symlinked from ``~/.cache/workbench/models`` and the weights-hash memo copied, so
   no conversion or hashing is timed), a fresh AppTest session, the page rendered, then its first
   Run button pressed (pages that run on load: the load itself). The time is from the press to the
   end of that script run, when the figure is on the page;
3. **cached**: the same again in a new session over the now warm cache.

A page passes when a figure (a plotly chart) appeared, no error or exception was shown, and the cold
time is within the target (60 s: the README's "first figure within about a minute of Run once the
model is loaded", on a quiet 2-core machine). Work the page's back-end does itself, such as loading a
second model (the Inversion proposer) or training an SAE, is part of the time.

Each page runs in its own process, killed after ``--timeout`` s, so that a run past the limit does
not keep a script thread busy under the next page's timing. Run on a quiet machine, e.g.

    nice -n 5 .venv/bin/python benchmarks/bench_pages.py [--pages 1,2,7] [--timeout 600]

Prints one row per page: page, model, load s, cold s, cached s, target, met?, and notes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "app_pages"
TARGET_S = 60.0


def analysis_pages() -> list[Path]:
    def number(p: Path) -> int:
        return int(p.stem.split("_", 1)[0])

    return sorted((p for p in PAGES.glob("*.py") if p.stem[0].isdigit() and 1 <= number(p) <= 98), key=number)


def _select(spec: str | None) -> list[Path]:
    pages = analysis_pages()
    if not spec:
        return pages
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    def match(p: Path, w: str) -> bool:  # a number names the page's number, other words a part of its name
        return p.stem.split("_", 1)[0] == w if w.isdigit() else w.lower() in p.stem.lower()

    picked = [p for p in pages if any(match(p, w) for w in wanted)]
    if not picked:
        raise SystemExit(f"no page matches {spec!r}; pages: {', '.join(p.stem for p in pages)}")
    return picked


def _fresh_cache(folder: Path) -> Path:
    from workbench.paths import cache_dir

    home = cache_dir()
    (folder / "models").mkdir(parents=True)
    for model in (home / "models").iterdir():
        if model.is_dir() and model.name != "cards" and (model / "workbench_converted.json").exists():
            os.symlink(model, folder / "models" / model.name)
    if (home / "fingerprints.json").exists():
        shutil.copy(home / "fingerprints.json", folder / "fingerprints.json")
    return folder


# ---- one page, in its own process ---------------------------------------------------------------
def _default_model(page: Path) -> str | None:
    """The model the page runs with on a fresh session: its first ui.run's choice, with ui.run stubbed."""
    from streamlit.testing.v1 import AppTest

    from workbench import ui

    seen = {}
    real = ui.run

    def probe(analysis, params, choice, *args, **kwargs):
        seen.setdefault("model", choice.get("model"))
        seen.setdefault("analysis", analysis)
        return None

    ui.run = probe
    try:
        AppTest.from_file(str(page), default_timeout=300).run()
    finally:
        ui.run = real
    return seen.get("model"), seen.get("analysis")


def _first_figure(page: Path, timeout: float) -> dict:
    """A fresh session: render, press the first Run button (unless the page ran on load); seconds to the figure."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(page), default_timeout=timeout)
    t0 = time.perf_counter()
    try:
        at.run()
    except RuntimeError as exc:  # AppTest's timeout
        return {"seconds": None, "status": f"on load: {str(exc)[:120]}", "how": "on load"}
    seconds, how = time.perf_counter() - t0, "on load"
    if not at.get("plotly_chart") and not at.exception:
        runs = [b for b in at.button if (b.key or "").startswith("run_")]
        if not runs:
            return {"seconds": None, "status": "no Run button", "how": "-"}
        before = len(at.get("plotly_chart"))
        t0 = time.perf_counter()
        try:
            runs[0].click().run()
        except RuntimeError as exc:  # AppTest's timeout
            return {"seconds": None, "status": f"{runs[0].key}: {str(exc)[:120]}", "how": f"button {runs[0].key}"}
        seconds, how = time.perf_counter() - t0, f"button {runs[0].key}"
        if len(at.get("plotly_chart")) <= before and not at.exception and not at.error:
            return {"seconds": seconds, "status": "no figure", "how": how}
    if at.exception:
        return {"seconds": seconds, "status": "exception: " + str(at.exception[0].value)[:200], "how": how}
    if at.error:
        return {"seconds": seconds, "status": "error: " + str(at.error[0].value)[:200], "how": how}
    warnings = [w.value for w in at.warning]
    return {"seconds": seconds, "status": "ok", "how": how, "warnings": [w[:160] for w in warnings]}


def worker(page: Path, timeout: float) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    scratch = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    try:
        cache = _fresh_cache(scratch / "cache")
        os.environ["WORKBENCH_CACHE"] = str(cache)
        model, analysis = _default_model(page)
        row = {"page": page.stem, "model": model, "analysis": analysis}
        if model:
            from workbench import ui

            t0 = time.perf_counter()
            ui.get_model(model)  # the page's st.cache_resource: its runs find the model loaded
            row["load_s"] = time.perf_counter() - t0
        row["cold"] = _first_figure(page, timeout)
        if row["cold"]["status"] == "ok":
            row["cached"] = _first_figure(page, timeout)
        return row
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---- the driver ---------------------------------------------------------------------------------
def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", help="comma-separated page numbers or name parts (default: every analysis page)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per page (load + cold + cached)")
    parser.add_argument("--target", type=float, default=TARGET_S, help="target time to first figure, s")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("ROW " + json.dumps(worker(Path(args.worker), args.timeout), default=str), flush=True)
        os._exit(0)  # a script run past its timeout may still hold a thread: do not wait for it

    rows = []
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}", flush=True)
    for page in _select(args.pages):
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", str(page), "--timeout", str(args.timeout)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=args.timeout * 2 + 200)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
            row = json.loads(lines[-1][4:]) if lines else {
                "page": page.stem, "cold": {"status": f"worker failed: {proc.stderr.strip().splitlines()[-1:]}"}}
        except subprocess.TimeoutExpired:
            row = {"page": page.stem, "cold": {"status": f"killed after {time.perf_counter() - t0:.0f} s"}}
        rows.append(row)
        cold, cached = row.get("cold", {}), row.get("cached", {})
        print(f"  {page.stem}: load {_fmt(row.get('load_s'))} s, cold {_fmt(cold.get('seconds'))} s "
              f"({cold.get('status')}), cached {_fmt(cached.get('seconds'))} s", flush=True)

    print()
    header = (f"{'page':22s} {'model':20s} {'load s':>7s} {'cold s':>8s} {'cached s':>9s} {'target':>7s}  met?  "
              "how / notes")
    print(header)
    print("-" * len(header))
    for row in rows:
        cold, cached = row.get("cold", {}), row.get("cached", {})
        ok = cold.get("status") == "ok" and cold.get("seconds") is not None
        met = "yes" if ok and cold["seconds"] <= args.target else "no"
        notes = cold.get("how", "") if ok else cold.get("status", "")
        print(f"{row['page']:22s} {str(row.get('model')):20s} {_fmt(row.get('load_s')):>7s} "
              f"{_fmt(cold.get('seconds')):>8s} {_fmt(cached.get('seconds')):>9s} {args.target:>7.0f}  {met:4s}  "
              f"{notes}")
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
