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
from .models import builtin_models
from .paths import cache_dir

MAX_UPLOAD_MB = 200
OTHER_MODEL = "Other: hub id or folder…"
UPLOAD = "Upload a file…"
PATH = "A file path…"


@st.cache_resource(show_spinner="Loading model…")
def get_model(name: str, device: str = "auto", dtype: str = "auto"):
    from .models import load_model

    return load_model(name, device=device, dtype=dtype)


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


def page_models(model_kinds: tuple[str, ...], need_data: bool, synthetic: bool = False) -> list[str]:
    """Built-in models a page offers: of its kinds, and — on pages that read natural text — not the
    project's toy models trained on synthetic data (``synthetic=True`` lets a page offer them)."""
    return [n for n, s in builtin_models().items()
            if s.kind in model_kinds and (synthetic or not need_data or s.trained_on is None or s.suits_data)]


def _model_picker(page: str, names: list[str], default: str | None) -> str | None:
    """The page's model: the preferred model when this page takes it, else the page's own last valid
    choice, else its default; never silently replaced by a model the page cannot take."""
    ss = st.session_state
    own_key = f"model@{page}"
    preferred = ss.get("model")
    if preferred in names:
        current = preferred
    elif ss.get(own_key) in names:
        current = ss[own_key]
    elif preferred and preferred not in builtin_models():  # a hub id or folder: the page checks it when it runs
        current = OTHER_MODEL
    else:
        current = default if default in names else (names[0] if names else OTHER_MODEL)
    options = names + [OTHER_MODEL]
    picked = st.selectbox("Model", options, index=options.index(current), key=f"model_select@{page}",
                          help="The built-in models this page takes (they load offline); a hub id needs a network.")
    if picked == OTHER_MODEL:
        other = st.text_input("Hub id or local folder", value=ss.get("model_other", ""), key=f"model_other@{page}")
        ss["model_other"] = other
        return other.strip() or None
    ss[own_key] = picked
    ss["model"] = picked
    return picked


def _placement() -> dict:
    """Device and precision, offering only what this machine has."""
    from .models import DTYPES, available_devices

    with st.expander("Device and precision", expanded=False):
        device = st.selectbox("Device", ["auto"] + available_devices(), key="device",
                              help="auto: the first GPU when there is one, else the CPU")
        dtype = st.selectbox("Precision", ["auto", *DTYPES], key="dtype",
                             help="auto: bfloat16 on GPUs that support it, float32 on the CPU")
    return {"device": device, "dtype": dtype}


def _vectors_input(choice: dict) -> None:
    upload = st.file_uploader("Vectors file", type=["npy", "parquet", "csv"], key="vectors_upload")
    if upload is not None:
        try:
            path = _save_upload(upload)
            choice["vectors"] = load_vectors(path)
            choice["data_ref"] = str(path)
            st.caption(f"{choice['vectors'].shape[0]} vectors × {choice['vectors'].shape[1]} dims")
        except WorkbenchError as exc:
            st.error(str(exc))


def _dataset_input(choice: dict, default_data: str | None) -> None:
    ss = st.session_state
    builtin = [d["name"] for d in list_datasets()]
    opts = builtin + [PATH, UPLOAD]
    current = ss.get("dataset", default_data or DEFAULT_DATASET)
    ds_choice = st.selectbox("Dataset", opts, index=opts.index(current) if current in opts else 0, key="dataset_select")
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


def sidebar(model_kinds: tuple[str, ...] = ("decoder", "encoder", "seq2seq"), need_data: bool = True,
            allow_vectors: bool = False, page: str | None = None, default_model: str | None = None,
            default_data: str | None = None, synthetic: bool = False) -> dict:
    """Model, dataset, device and precision pickers shared by every page (kept in ``st.session_state``).

    Each page offers only the models it takes (:func:`page_models`) and keeps its own valid choice.
    Returns ``{"model", "data", "data_ref", "vectors", "device", "dtype", "mismatch"}``; ``mismatch`` is
    a sentence when the model does not suit the data (a page shows it and runs only if the user insists).
    """
    from .models.registry import DEFAULT_MODEL as _DEFAULT, data_mismatch

    page = page or "/".join(model_kinds)
    choice = {"model": None, "data": None, "data_ref": None, "vectors": None, "mismatch": None}
    with st.sidebar:
        st.header("Model and data")
        source = "model"
        if allow_vectors:
            source = st.radio("Input", ["model", "vectors"], horizontal=True, key="input_source",
                              format_func=lambda s: {"model": "model + dataset", "vectors": "my vectors (.npy/.parquet/.csv)"}[s])
        if source == "vectors":
            _vectors_input(choice)
            return choice
        names = page_models(model_kinds, need_data, synthetic)
        choice["model"] = _model_picker(page, names, default_model or _DEFAULT)
        if choice["model"] in builtin_models():
            st.caption(builtin_models()[choice["model"]].description)
        if need_data:
            _dataset_input(choice, default_data)
        choice.update(_placement())
        if choice["model"] and choice.get("data") is not None:
            choice["mismatch"] = data_mismatch(choice["model"], choice["data_ref"])
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
    booleans, a number input (or with ``slider=True`` a slider) bounded exactly as declared for numbers
    (``min_value``/``max_value`` may narrow the range, never widen it),
    a text input otherwise (blank = None for nullable parameters). ``default`` overrides the declared
    default where a page wants a cheaper start (it must be allowed). ``widget_kwargs`` go to the widget
    (step, format, disabled, format_func, help). Returns the widget's value.
    """
    from .analysis import get_analysis

    param = get_analysis(analysis).all_params[name]
    value = param.default if default is _DECLARED else param.coerce(default)
    label = label or name
    widget_kwargs.setdefault("help", param.help or None)
    # a value already in the session (kept from an earlier run, or set by a preset switch) is the widget's
    # value: passing a default beside it would only make Streamlit warn about the two
    held = key in st.session_state
    if options is not None or param.choices:
        options = [param.coerce(o) for o in options] if options is not None else list(param.choices)
        index = {} if held else {"index": options.index(value)}
        return container.selectbox(label, options, key=key, **index, **widget_kwargs)
    if param.type is bool:
        return container.checkbox(label, **({} if held else {"value": bool(value)}), key=key, **widget_kwargs)
    if param.type in (int, float):
        low, high = _widget_bounds(param)
        # a page may narrow the declared range (e.g. a bound that depends on another widget), never widen it
        if widget_kwargs.get("min_value") is not None:
            low = max(low, widget_kwargs["min_value"]) if low is not None else widget_kwargs["min_value"]
        if widget_kwargs.get("max_value") is not None:
            high = min(high, widget_kwargs["max_value"]) if high is not None else widget_kwargs["max_value"]
        widget_kwargs.pop("min_value", None), widget_kwargs.pop("max_value", None)
        cast = int if param.type is int else float
        value = None if value is None else cast(value)
        if "step" in widget_kwargs:
            widget_kwargs["step"] = cast(widget_kwargs["step"])
        start = {} if held else {"value": value}
        if slider:
            return container.slider(label, low, high, key=key, **start, **widget_kwargs)
        return container.number_input(label, low, high, key=key, **start, **widget_kwargs)
    start = {} if held else {"value": "" if value is None else str(value)}
    text = container.text_input(label, key=key, **start, **widget_kwargs)
    return None if param.nullable and not text.strip() else text


QUICK_LOOK, PAPER_SIZE = "Quick look (a first figure in about a minute)", "Paper size (the analysis' defaults)"


def size_preset(analysis: str, key: str, widgets: dict[str, dict], quick: dict[str, Any],
                container=st) -> dict[str, dict]:
    """A switch between a quick first look (``quick``: {parameter: value}) and the analysis' declared,
    paper-size defaults, one click apart. Returns ``widgets`` (the :func:`param_widgets` spec) with the
    quick values as their starting defaults; switching sets those widgets' values (other widgets keep
    theirs). The command under the figure always states every value used."""
    from .analysis import get_analysis

    declared = get_analysis(analysis).all_params

    def switch() -> None:
        paper = st.session_state[key] == PAPER_SIZE
        for name, value in quick.items():
            st.session_state[widgets[name]["key"]] = declared[name].default if paper else value

    container.radio("Preset", [QUICK_LOOK, PAPER_SIZE], key=key, horizontal=True, on_change=switch,
             help="Quick look: fewer texts and augmentations, so the first figure comes fast. Paper size: the "
                  "settings the README's results use.")
    for name, value in quick.items():
        widgets[name].setdefault("default", value)
    return widgets


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
    key = result_key(analysis, models + [choice.get("device"), choice.get("dtype")], choice.get("data_ref"),
                     choice.get("vectors"), params)
    # with auto=True the analysis reruns whenever its inputs change: a button would only repeat that
    clicked = False if auto else st.button(button_label, type="primary", key=f"run_{analysis}")
    # A button is True for one script run only. A rerun that lands while the analysis runs (a widget outside
    # its parameters, the rerun Streamlit does after a websocket reconnect on a loaded machine) stops that
    # script run, and the next one would forget the press and show an idle page. The press is kept until
    # its run ends. (The R key does not count: Streamlit ignores it while a script runs.)
    pending = ss.setdefault("_pending_runs", {})
    if clicked:
        pending[analysis] = key
    if key not in results:
        resuming = not clicked and pending.get(analysis) == key
        if not (clicked or auto or resuming):
            st.info("Set the parameters, then press **Run**.")
            return None
        if resuming:
            st.caption("Resuming the run you started (a page rerun interrupted it); stored activations are reused.")
        if choice.get("model") is None and choice.get("vectors") is None:
            st.warning("Pick a model (or vectors) in the sidebar.")
            return None
        if choice.get("mismatch") and not st.session_state.get(f"insist@{analysis}"):
            st.warning(choice["mismatch"] + " Pick another model or dataset, or tick below to run anyway.")
            st.checkbox("Run anyway", key=f"insist@{analysis}")
            return None
        try:
            result = _run_with_progress(analysis, params, choice, models, on_step, run_analysis, run_many)
        except Exception:  # a failed run is not retried by the next rerun; Streamlit's stop/rerun are BaseExceptions
            pending.pop(analysis, None)
            raise
        pending.pop(analysis, None)
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
        text = message or f"{done}/{total}"
        if "s left" not in text:  # a run that declared no plan: the time so far, and an ETA of this bar
            elapsed = time.time() - t0
            text += f" · {elapsed:.0f} s" + (f", about {elapsed / frac * (1 - frac):.0f} s left" if frac > 0.05 else "")
        bar.progress(frac, text=text)

    placement = {"device": choice.get("device", "auto"), "dtype": choice.get("dtype", "auto")}
    # the placement also goes to the run, for the reproducing command line (the model comes loaded)
    kwargs = dict(data=choice.get("data"), vectors=choice.get("vectors"), params=params, progress=progress,
                  on_step=on_step, **placement)
    try:
        if choice.get("model") is None:
            result = run_analysis(analysis, model=None, **kwargs)
        elif len(models) == 1:
            result = run_analysis(analysis, model=get_model(models[0], **placement), **kwargs)
        else:
            result = run_many(analysis, [get_model(m, **placement) for m in models], **kwargs)
    except WorkbenchError as exc:
        st.error(str(exc))
        return None
    finally:
        bar.empty()
    typed = str(choice.get("data_ref") or "").startswith(("prompt:", "text:"))
    if choice.get("data_ref") and result.manifest.get("dataset") and not typed:
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
