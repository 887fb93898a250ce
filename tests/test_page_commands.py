"""Every command shown under a figure runs as shown and gives the page's table.

Each page is driven under Streamlit's AppTest with small settings on a built-in model (offline). The
``workbench run ...`` line the page shows under its figure (``ui.show_figure``: an ``st.code`` block)
is then run exactly as shown, in a fresh process (``python -m workbench.cli`` for ``workbench``), from
a scratch folder (so its ``--out out/ANALYSIS`` lands there) and against a second, empty activation
cache (so the command extracts again rather than reading the page's entries). Its ``result.parquet``
must equal the table the page's Parquet button exports. Stochastic analyses run with their seed, so
the tables agree to float noise; timing columns are left out.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "app_pages"
pytestmark = pytest.mark.slow  # real built-in models

TIMING = ("seconds", "time_s", "runtime_s", "elapsed_s")  # wall-clock columns differ between any two runs


def _cache(folder: Path) -> Path:
    """An empty activation cache that reuses the converted built-in models (no conversion timed or repeated)."""
    from workbench.paths import cache_dir

    home = cache_dir()
    (folder / "models").mkdir(parents=True)
    for name in ("smollm2-135m", "gemma3-270m"):
        if (home / "models" / name).exists():
            os.symlink(home / "models" / name, folder / "models" / name)
    if (home / "fingerprints.json").exists():  # the weights-hash memo: no re-hashing of 0.5 GB
        shutil.copy(home / "fingerprints.json", folder / "fingerprints.json")
    return folder


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """(the pages' cache, the commands' cache), both empty apart from the converted models."""
    from workbench.models import builtin_models

    builtin_models()["smollm2-135m"].resolve()  # converted once into the user's cache, outside both
    root = tmp_path_factory.mktemp("page_commands")
    page_cache, cli_cache = _cache(root / "page_cache"), _cache(root / "cli_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_CACHE", str(page_cache))
        yield page_cache, cli_cache


def drive(page: str, state: dict, button: str | None = None, timeout: int = 900) -> AppTest:
    """Run ``page`` with the widget values in ``state`` (by key), then press ``button`` (a key) if given."""
    at = AppTest.from_file(str(PAGES / page), default_timeout=timeout)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if button is not None:
        at.button(key=button).click().run()
        assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def shown_commands(at: AppTest) -> list[str]:
    """The distinct reproduce commands the page shows, in page order."""
    seen = []
    for code in at.code:
        if code.value.startswith("workbench run ") and code.value not in seen:
            seen.append(code.value)
    assert seen, "the page shows no reproduce command"
    return seen


def page_table(at: AppTest, command: str) -> pd.DataFrame:
    """The table of the result whose command is ``command``, as the page's Parquet button exports it."""
    import io

    from workbench.results import table_bytes

    results = [r for r in at.session_state["_results"].values() if r.manifest.get("cli") == command]
    assert results, f"no result on the page has the command it shows: {command}"
    return pd.read_parquet(io.BytesIO(table_bytes(results[0].table, "parquet")))


def run_shown(command: str, cwd: Path, cache: Path) -> pd.DataFrame:
    """Run ``command`` as shown (``workbench`` = ``python -m workbench.cli``); returns its result.parquet."""
    argv = shlex.split(command)
    assert argv[:2] == ["workbench", "run"], command
    argv = [sys.executable, "-m", "workbench.cli", *argv[1:]]
    if "--out" not in argv:
        argv += ["--out", "out"]
    out = Path(argv[argv.index("--out") + 1])
    out = out if out.is_absolute() else cwd / out
    assert not out.exists(), f"{out} is left from another command"
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WORKBENCH_CACHE": str(cache), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"`{command}` failed:\n{proc.stderr[-3000:]}"
    return pd.read_parquet(out / "result.parquet")


def assert_same_table(page: pd.DataFrame, cli: pd.DataFrame, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    drop = [c for c in TIMING if c in page.columns]
    page, cli = page.drop(columns=drop), cli.drop(columns=[c for c in drop if c in cli.columns])
    # list-valued number columns (top-k probabilities, stored rounded to 6 decimals) are compared with
    # the same tolerance: a page run on one thread and a command on two may round the last digit apart
    listed = [c for c in page.columns if page[c].dtype == object and len(page) and _numeric_list(page[c].iloc[0])]
    for c in listed:
        assert c in cli.columns, c
        np.testing.assert_allclose(np.stack(page[c].map(np.asarray)), np.stack(cli[c].map(np.asarray)),
                                   rtol=rtol, atol=max(atol, 2e-6), err_msg=c)
    pd.testing.assert_frame_equal(page.drop(columns=listed), cli.drop(columns=listed), check_exact=False,
                                  rtol=rtol, atol=atol)


def _numeric_list(value) -> bool:
    try:
        return isinstance(value, (list, np.ndarray)) and np.asarray(value).dtype.kind in "fiu"
    except (TypeError, ValueError):
        return False


def check_commands(at: AppTest, tmp_path: Path, cli_cache: Path, expect: int = 1, **tolerance) -> list[str]:
    commands = shown_commands(at)
    assert len(commands) == expect, commands
    for n, command in enumerate(commands):
        assert_same_table(page_table(at, command), run_shown(command, tmp_path / f"cmd{n}", cli_cache), **tolerance)
    return commands


def test_layer_stats_command_reproduces(caches, tmp_path):
    at = drive("1_Layer_stats.py", {"ls_max_texts": 3, "ls_max_length": 12, "ls_skip": True})  # runs on load
    (command,) = check_commands(at, tmp_path, caches[1])
    assert "--data abstracts" in command and "skip_first=true" in command
    # the table compared is the one the page shows
    (result,) = at.session_state["_results"].values()
    pd.testing.assert_frame_equal(at.dataframe[-1].value.reset_index(drop=True), result.table)


def test_lenses_typed_prompt_command_reproduces(caches, tmp_path):
    prompt = "The capital of France is"
    at = drive("2_Lenses.py", {"lens_mode": "a prompt I type", "lens_prompt": prompt, "lens_max_length": 16,
                               "lens_top_k": 3})
    # the logit lens (heatmap and curves) and, with the shipped lens for this model, the tuned lens
    commands = check_commands(at, tmp_path, caches[1], expect=2)
    assert [shlex.split(c)[2] for c in commands] == ["logit_lens", "tuned_lens"]
    for command in commands:
        assert f"--text '{prompt}'" in command and "--data" not in command


def test_geometry_commands_reproduce(caches, tmp_path):
    at = drive("4_Geometry.py", {"geo_est": ["svd", "twonn", "mle_mg"], "geo_texts": 4, "geo_len": 12,
                                 "geo_pts": 500, "geo_boot": 5, "geo_bootspec": 3, "geo_pairs": 500, "geo_seed": 3},
               button="run_geometry")
    (command,) = check_commands(at, tmp_path, caches[1], rtol=1e-3, atol=1e-5)  # seeded bootstraps
    assert "seed=3" in command and "n_boot=5" in command
    # the 2-D map: a second command on the same page
    at.session_state["proj_texts"] = 3
    at.button(key="run_projection").click().run()
    assert not at.exception, [e.value for e in at.exception]
    commands = shown_commands(at)
    (map_command,) = [c for c in commands if c.startswith("workbench run projection ")]
    # PCA signs and float noise: compare up to 1e-3 relative on the coordinates
    assert_same_table(page_table(at, map_command), run_shown(map_command, tmp_path / "map", caches[1]),
                      rtol=1e-3, atol=1e-4)


def test_decoder_lens_command_reproduces(caches, tmp_path):
    at = drive("3_DecoderLens.py", {"dl_max_examples": 6, "dl_max_new_tokens": 8}, button="run_decoder_lens")
    assert at.sidebar.selectbox[0].value == "t5-tasks"
    (command,) = check_commands(at, tmp_path, caches[1])
    assert "--model t5-tasks --data seq2seq-tasks" in command and "max_examples=6" in command


def test_circuits_command_reproduces(caches, tmp_path):
    at = drive("6_Circuits.py", {"circ_n": 8, "circ_seeds": 1, "circ_seed": 2, "circ_epochs": 20},
               button="run_circuits")
    assert at.sidebar.selectbox[0].value == "attn-only-induction"
    commands = check_commands(at, tmp_path, caches[1], expect=len(shown_commands(at)), rtol=1e-3, atol=1e-5)
    assert all("--model attn-only-induction" in c and "n_examples=8" in c for c in commands)


def test_inversion_typed_text_command_reproduces(caches, tmp_path):
    text = "The cat sat on the mat."
    at = drive("7_Inversion.py", {"inv_mode": "a text I type", "inv_text": text, "inv_beam": 2, "inv_topk": 2,
                                  "inv_steps": 3, "inv_stages": 2, "inv_rsteps": 2, "inv_rpool": 2, "inv_seed": 5,
                                  "inv_precision": "fp32"},
               button="run_inversion")
    (command,) = check_commands(at, tmp_path, caches[1], rtol=1e-4, atol=1e-5)
    assert shlex.split(command)[shlex.split(command).index("--text") + 1] == text
    assert "--data" not in command and "refine_pool=2" in command and "precision=fp32" in command


def test_inversion_page_controls():
    """Single-text mode has no item count; the refinement has its own steps; precision and the refinement pool
    are the back-end's parameters; with one stage the refinement's settings are greyed out."""
    at = AppTest.from_file(str(PAGES / "7_Inversion.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    keys = {w.key for kind in ("number_input", "selectbox", "text_input", "checkbox") for w in at.get(kind)}
    assert "inv_items" not in keys and {"inv_steps", "inv_rsteps", "inv_rpool", "inv_precision", "inv_stages"} <= keys
    assert at.selectbox(key="inv_precision").options == ["auto", "fp32", "bf16"]
    assert not at.number_input(key="inv_rsteps").disabled and "stage 1 only" in at.number_input(key="inv_steps").help
    at.number_input(key="inv_stages").set_value(1).run()
    assert at.number_input(key="inv_rsteps").disabled and at.number_input(key="inv_rpool").disabled
    assert any("32 proposer steps in all (32)" in c.value for c in at.caption)
    at.number_input(key="inv_stages").set_value(3).run()
    assert any("96 proposer steps in all (32 + 32 + 32)" in c.value for c in at.caption)
    at.radio(key="inv_mode").set_value("the sidebar's dataset or vectors (an audit)").run()
    assert not at.exception and at.number_input(key="inv_items").value == 5
