"""End-to-end time of a cached run against the cold one, each a fresh `workbench run` process.

The same command twice, `workbench run layer_stats --model smollm2-135m --data 'abstracts[300:340]'`
(40 abstracts never used elsewhere, default settings, PNG/SVG export included when Chromium is
there), against an activation cache that starts empty (the converted model is reused: converting it
is a one-off, not part of a cold run). The second run finds every activation in the store, so it
never loads the weights (the model's card gives the cache key) and only pays for imports, the
statistics and the export. Target: the cached run is at least 10x faster end to end.

Run: .venv/bin/python benchmarks/bench_cached_run.py [--repeats 3]
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
COMMAND = ["run", "layer_stats", "--model", "smollm2-135m", "--data", "abstracts[300:340]"]


def _timed(cache: Path, out: Path) -> tuple[float, dict]:
    env = {**os.environ, "WORKBENCH_CACHE": str(cache)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workbench.cli", *COMMAND, "--out", str(out)], cwd=ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cached runs (the median is reported)")
    args = parser.parse_args()
    from workbench.models import builtin_models
    from workbench.paths import cache_dir

    builtin_models()["smollm2-135m"].resolve()  # convert once, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        (cache / "models").mkdir(parents=True)
        # the converted model only (no card, no activations): the first run is a true cold run
        os.symlink(cache_dir() / "models" / "smollm2-135m", cache / "models" / "smollm2-135m")
        if (cache_dir() / "fingerprints.json").exists():  # the weights hash memo: no re-hashing 0.5 GB
            shutil.copy(cache_dir() / "fingerprints.json", cache / "fingerprints.json")
        cold, cold_manifest = _timed(cache, Path(tmp) / "cold")
        warm = []
        for i in range(args.repeats):
            seconds, manifest = _timed(cache, Path(tmp) / f"warm{i}")
            warm.append(seconds)
        warm.sort()
        median = warm[len(warm) // 2]
    hits = [e["hit"] for e in manifest["cache"]]
    print(f"command: workbench {' '.join(COMMAND)} --out DIR (fresh process each)")
    print(f"cold run   {cold:7.2f} s  (weights loaded: {cold_manifest['model']['weights_loaded']}, "
          f"static export: {cold_manifest.get('static_export', '-')})")
    print(f"cached run {median:7.2f} s  median of {args.repeats} (weights loaded: {manifest['model']['weights_loaded']},"
          f" cache hits: {hits}); all: {', '.join(f'{w:.2f}' for w in warm)}")
    print(f"ratio cold / cached: {cold / median:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
