"""Copy a few page screenshots from the browser test into docs/screenshots/ for the README.

The screenshots are taken by ``tests/test_browser_every_page.py`` (every page, after a run with its
defaults, in headless Chromium) into ``out/pages/``. This keeps the README's images regenerable:

    WORKBENCH_SLOW_TESTS=1 .venv/bin/python -m pytest -q tests/test_browser_every_page.py
    .venv/bin/python scripts/readme_screenshots.py

Each image is cut to the top ``--max-height`` pixels of the page and scaled to ``--width`` so the
repository stays small.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("Layer_stats", "Lenses", "Geometry", "Layer_quality", "Circuits", "Similarity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT / "out" / "pages")
    parser.add_argument("--dest", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--max-height", type=int, default=1800, help="pixels of the page kept, from the top")
    parser.add_argument("--pages", default=",".join(PAGES))
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in args.pages.split(","):
        src = args.source / f"{name}.png"
        if not src.exists():
            raise SystemExit(f"{src} is missing: run tests/test_browser_every_page.py first")
        image = Image.open(src).convert("RGB")
        image = image.crop((0, 0, image.width, min(image.height, args.max_height)))
        scale = args.width / image.width
        image = image.resize((args.width, round(image.height * scale)), Image.LANCZOS)
        out = args.dest / f"{name}.png"
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        print(f"{out.relative_to(ROOT)}  {image.width}x{image.height}  {out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
