"""Streamlit helpers shared by every page: the sidebar choices, running with progress, export.

Pages stay thin: widgets for parameters, built by :func:`param_widget` / :func:`param_widgets` from
the analysis's :class:`~workbench.analysis.Param` declarations (defaults, bounds and choices come
from there, not from the page), then :func:`run_and_show`. Heavy objects (models) live under ``st.cache_resource``;
results are memoised per session by their inputs so that moving a widget that does not change the
inputs does not recompute.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import streamlit as st

from .data import BUILTIN_DATASETS, DEFAULT_DATASET, TextDataset, list_datasets, load_dataset, load_vectors
from .errors import WorkbenchError
from .models import DEFAULT_MODEL, builtin_models
from .paths import cache_dir

MAX_UPLOAD_MB = 200
OTHER_MODEL = "Other: hub id or folder…"
UPLOAD = "Upload a file…"
PATH = "A file path…"


@st.cache_resource(show_spinner="Loading model…")
def get_model(name: str):
    from .models import load_model

    return load_model(name)


@st.cache_resource(show_spinner=False)
def _dataset(spec: str, text_column: str | None, label_column: str | None) -> TextDataset:
    return load_dataset(spec, text_column or None, label_column or None)


def _save_upload(upload) -> Path:
    data = upload.getvalue()
    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise WorkbenchError(f"{upload.name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_MB} MB. "
                             "Use the CLI (`workbench run ... --data FILE`) for larger files.")
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = cache_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}{Path(upload.name).suffix.lower()}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def sidebar(model_kinds: tuple[str, ...] = ("decoder", "encoder", "seq2seq"), need_data: bool = True,
            allow_vectors: bool = False) -> dict:
    """Model and dataset pickers shared by every page (kept in ``st.session_state``).

    Returns ``{"model": name | None, "data": TextDataset | None, "data_ref": str, "vectors": array | None}``.
    """
    ss = st.session_state
    specs = builtin_models()
    names = [n for n, s in specs.items() if s.kind in model_kinds]
    choice = {"model": None, "data": None, "data_ref": None, "vectors": None}
    with st.sidebar:
        st.header("Model and data")
        source = "model"
        if allow_vectors:
            source = st.radio("Input", ["model", "vectors"], horizontal=True, key="input_source",
                              format_func=lambda s: {"model": "model + dataset", "vectors": "my vectors (.npy/.parquet/.csv)"}[s])
        if source == "vectors":
            upload = st.file_uploader("Vectors file", type=["npy", "parquet", "csv"], key="vectors_upload")
            if upload is not None:
                try:
                    path = _save_upload(upload)
                    choice["vectors"] = load_vectors(path)
                    choice["data_ref"] = str(path)
                    st.caption(f"{choice['vectors'].shape[0]} vectors × {choice['vectors'].shape[1]} dims")
                except WorkbenchError as exc:
                    st.error(str(exc))
            return choice
        options = names + [OTHER_MODEL]
        current = ss.get("model", DEFAULT_MODEL)
        if current not in names and current != OTHER_MODEL:
            ss["model_other"] = current
            current = OTHER_MODEL
        default_index = options.index(current) if current in options else 0
        picked = st.selectbox("Model", options, index=default_index, key="model_select",
                              help="Built-in models load offline; a hub id needs a network.")
        if picked == OTHER_MODEL:
            other = st.text_input("Hub id or local folder", value=ss.get("model_other", ""), key="model_other_input")
            ss["model_other"] = other
            choice["model"] = other.strip() or None
        else:
            choice["model"] = picked
        if choice["model"]:
            ss["model"] = choice["model"]
            if choice["model"] in specs:
                st.caption(specs[choice["model"]].description)
        if need_data:
            builtin = [d["name"] for d in list_datasets()]
            opts = builtin + [PATH, UPLOAD]
            current = ss.get("dataset", DEFAULT_DATASET)
            idx = opts.index(current) if current in opts else 0
            ds_choice = st.selectbox("Dataset", opts, index=idx, key="dataset_select")
            ss["dataset"] = ds_choice
            spec = None
            if ds_choice == PATH:
                spec = st.text_input("Path (.txt, .csv, .jsonl, .parquet)", value=ss.get("dataset_path", ""),
                                     key="dataset_path_input").strip() or None
                ss["dataset_path"] = spec or ""
            elif ds_choice == UPLOAD:
                upload = st.file_uploader(f"Text file (≤ {MAX_UPLOAD_MB} MB)", type=["txt", "csv", "jsonl", "parquet"],
                                          key="dataset_upload")
                if upload is not None:
                    try:
                        spec = str(_save_upload(upload))
                    except WorkbenchError as exc:
                        st.error(str(exc))
            else:
                spec = ds_choice
                st.caption(BUILTIN_DATASETS[ds_choice][3])
            text_col = label_col = None
            if spec and spec not in BUILTIN_DATASETS and Path(spec).suffix.lower() in {".csv", ".jsonl", ".parquet"}:
                text_col = st.text_input("Text column (blank: guess)", key="text_column") or None
                label_col = st.text_input("Label column (optional)", key="label_column") or None
            if spec:
                try:
                    choice["data"] = _dataset(spec, text_col, label_col)
                    choice["data_ref"] = spec
                    st.caption(f"{len(choice['data'])} texts")
                except WorkbenchError as exc:
                    st.error(str(exc))
    return choice


_DECLARED = object()  # param_widget's default: the Param's own default


def _widget_bounds(param) -> tuple:
    """(min_value, max_value) of a number widget that admits exactly the declared interval: an open
    bound becomes the nearest value inside it (the next integer, or the next float)."""
    def inside(bound, inclusive: bool, toward: int):
        if bound is None:
            return None
        if param.type is int:
            if inclusive:
                return math.ceil(bound) if toward > 0 else math.floor(bound)
            return math.floor(bound) + 1 if toward > 0 else math.ceil(bound) - 1
        return float(bound) if inclusive else math.nextafter(float(bound), toward * math.inf)

    return inside(param.min, param.min_inclusive, 1), inside(param.max, param.max_inclusive, -1)


def param_widget(analysis: str, name: str, container=st, *, key: str, label: str | None = None,
                 default: Any = _DECLARED, options: list | None = None, slider: bool = False, **widget_kwargs):
    """The widget for one parameter of ``analysis``, built from its :class:`~workbench.analysis.Param`.

    A selectbox for choices (or for ``options``, a subset of the allowed values), a checkbox for
    booleans, a number input (or with ``slider=True`` a slider) bounded exactly as declared for numbers,
    a text input otherwise (blank = None for nullable parameters). ``default`` overrides the declared
    default where a page wants a cheaper start (it must be allowed). ``widget_kwargs`` go to the widget
    (step, format, disabled, format_func, help). Returns the widget's value.
    """
    from .analysis import get_analysis

    param = get_analysis(analysis).all_params[name]
    value = param.default if default is _DECLARED else param.coerce(default)
    label = label or name
    widget_kwargs.setdefault("help", param.help or None)
    if options is not None or param.choices:
        options = [param.coerce(o) for o in options] if options is not None else list(param.choices)
        return container.selectbox(label, options, index=options.index(value), key=key, **widget_kwargs)
    if param.type is bool:
        return container.checkbox(label, bool(value), key=key, **widget_kwargs)
    if param.type in (int, float):
        low, high = _widget_bounds(param)
        cast = int if param.type is int else float
        value = None if value is None else cast(value)
        if "step" in widget_kwargs:
            widget_kwargs["step"] = cast(widget_kwargs["step"])
        if slider:
            return container.slider(label, low, high, value, key=key, **widget_kwargs)
        return container.number_input(label, low, high, value, key=key, **widget_kwargs)
    text = container.text_input(label, "" if value is None else str(value), key=key, **widget_kwargs)
    return None if param.nullable and not text.strip() else text


def param_widgets(analysis: str, widgets: dict[str, dict]) -> dict:
    """Widgets for several parameters: ``{name: param_widget keyword arguments}`` -> ``{name: value}``."""
    return {name: param_widget(analysis, name, **kwargs) for name, kwargs in widgets.items()}


def result_key(analysis: str, model, data_ref, vectors, params: dict) -> str:
    vec = None if vectors is None else hashlib.sha256(vectors.tobytes()).hexdigest()[:16]
    return json.dumps([analysis, model, data_ref, vec, params], sort_keys=True, default=str)


def run(analysis: str, params: dict, choice: dict, button_label: str = "Run", auto: bool = False,
        overlay: list[str] | tuple = (), on_step=None):
    """Run ``analysis`` with a progress bar; returns the Result (memoised per session) or None.

    ``overlay``: more models run on the same data and settings into the same Result (the core's
    ``run_many``: one table with a model column, one manifest, one CLI line). ``on_step`` gets the
    back-end's structured step records (a live view). Warnings that qualify the result are shown
    above it.
    """
    from .analysis import run_analysis, run_many

    ss = st.session_state
    results = ss.setdefault("_results", {})
    models = [choice.get("model")] + [m for m in overlay if m != choice.get("model")]
    key = result_key(analysis, models, choice.get("data_ref"), choice.get("vectors"), params)
    # with auto=True the analysis reruns whenever its inputs change: a button would only repeat that
    clicked = False if auto else st.button(button_label, type="primary", key=f"run_{analysis}")
    if key not in results:
        if not (clicked or auto):
            st.info("Set the parameters, then press **Run**.")
            return None
        if choice.get("model") is None and choice.get("vectors") is None:
            st.warning("Pick a model (or vectors) in the sidebar.")
            return None
        result = _run_with_progress(analysis, params, choice, models, on_step, run_analysis, run_many)
        if result is None:
            return None
        results[key] = result
    result = results[key]
    for warning in result.manifest.get("warnings", []):
        st.warning(warning)
    return result


def _run_with_progress(analysis, params, choice, models, on_step, run_analysis, run_many):
    bar = st.progress(0.0, text="starting…")
    t0 = time.time()

    def progress(done: int, total: int, message: str = "") -> None:
        frac = min(done / total, 1.0) if total else 0.0
        bar.progress(frac, text=message or f"{done}/{total} ({time.time() - t0:.0f} s)")

    kwargs = dict(data=choice.get("data"), vectors=choice.get("vectors"), params=params, progress=progress,
                  on_step=on_step)
    try:
        if choice.get("model") is None:
            result = run_analysis(analysis, model=None, **kwargs)
        elif len(models) == 1:
            result = run_analysis(analysis, model=get_model(models[0]), **kwargs)
        else:
            result = run_many(analysis, [get_model(m) for m in models], **kwargs)
    except WorkbenchError as exc:
        st.error(str(exc))
        return None
    finally:
        bar.empty()
    if choice.get("data_ref") and result.manifest.get("dataset"):
        # the CLI line must name the dataset the way the user chose it
        result.manifest["cli"] = result.manifest["cli"].replace(
            f"--data {result.manifest['dataset']['source']}", f"--data {choice['data_ref']}")
    return result


def show_figure(result, fig=None, key: str = "main") -> None:
    """The figure, then export buttons (HTML, PNG, SVG, CSV, parquet, manifest) and the CLI command."""
    from .results import figure_html, figure_images, table_bytes

    fig = fig if fig is not None else result.figure()
    st.plotly_chart(fig, width="stretch", key=f"fig_{result.analysis}_{key}")
    base = f"{result.analysis}_{key}"
    cols = st.columns(6)
    cols[0].download_button("HTML", figure_html(fig), f"{base}.html", "text/html", key=f"html_{base}")
    cols[1].download_button("CSV", table_bytes(result.table, "csv"), f"{base}.csv", "text/csv", key=f"csv_{base}")
    cols[2].download_button("Parquet", table_bytes(result.table, "parquet"), f"{base}.parquet", key=f"pq_{base}")
    cols[3].download_button("Manifest", result.manifest_json(), f"{base}_manifest.json", "application/json",
                            key=f"man_{base}")
    static_key = f"static_{base}"
    if cols[4].button("PNG / SVG", key=f"mk_{static_key}", help="Render static images (kaleido + Chromium)"):
        try:
            images = figure_images(fig, ("png", "svg"))
            st.session_state[static_key] = (images["png"], images["svg"])
        except WorkbenchError as exc:
            st.warning(str(exc))
    if static_key in st.session_state:
        png, svg = st.session_state[static_key]
        cols[4].download_button("PNG", png, f"{base}.png", "image/png", key=f"png_{base}")
        cols[5].download_button("SVG", svg, f"{base}.svg", "image/svg+xml", key=f"svg_{base}")
    st.caption("Reproduce from the command line:")
    st.code(result.manifest.get("cli", ""), language="bash")


def show_table(result, columns: list[str] | None = None, label: str = "Result table") -> None:
    with st.expander(label, expanded=False):
        st.dataframe(result.table if columns is None else result.table[columns], width="stretch")


def page_header(analysis: str) -> None:
    from .analysis import get_analysis

    spec = get_analysis(analysis)
    st.title(spec.title)
    st.markdown(f"*{spec.question}*")


def run_and_show(analysis: str, params: dict, choice: dict, auto: bool = False):
    """:func:`run` then :func:`show_figure` and :func:`show_table`; returns the Result or None."""
    result = run(analysis, params, choice, auto=auto)
    if result is not None:
        show_figure(result)
        show_table(result)
    return result
