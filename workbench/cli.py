"""The ``workbench`` command line.

    workbench models                               built-in and cached models
    workbench datasets                             built-in sample sets
    workbench analyses                             registered analyses and their parameters
    workbench extract --model M --data D [--hooks resid,attn_z] [--max-length N]
    workbench run ANALYSIS --model M --data D --out DIR [--set key=value ...]
    workbench run ANALYSIS --vectors FILE --out DIR         (analyses that accept vectors)
    workbench batch PLAN.yaml                      a grid of analyses x models x datasets + index.html
    workbench cache ls | verify | clean | rm KEY | clear
    workbench reproduce [TABLE ...] [--update-readme]  the README's results tables, from these commands
    workbench app [--port 8501]                    serve the Streamlit app on 127.0.0.1

Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import yaml

from .batch import (_default_data_for, _default_model_for, _model_entries, _read_plan, _write_index,  # noqa: F401
                    plan_jobs, run_batch_job)
from .cli_cache import _table, cmd_cache
from .errors import TruncationWarning, WorkbenchError, truncation_message
from .models.info import HOOK_GROUPS


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error of the CLI."""

    def error(self, message: str):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _tristate(text: str) -> bool | None:
    values = {"true": True, "false": False, "none": None}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"must be true, false or none, got {text!r}")
    return values[text.lower()]


def _out_folder(path: str) -> Path:
    """Check ``--out`` before any work: it must be a folder (or not exist yet)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"--out {out} is a file, not a folder: give a folder for the results.")
    return out


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = {"bar": None}

    def update(done: int, total: int, message: str = "") -> None:
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=total, desc=desc, unit="item", file=sys.stderr, leave=False)
        bar["bar"].total = total
        bar["bar"].n = done
        bar["bar"].set_postfix_str(message[-60:], refresh=False)
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()
            bar["bar"] = None

    return update


def _parse_sets(pairs: list[str]) -> dict:
    """``--set key=value`` pairs -> parameters; each value is read as plain YAML (number, true, null, [list])."""
    params = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise WorkbenchError(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        key = key.strip()
        try:
            params[key] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as exc:
            # e.g. a tag such as !!python/object, which safe_load refuses; its message spans several lines
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise WorkbenchError(f"--set {key}: cannot read the value {value!r} ({problem}); give a plain number, "
                                 "text, true/false, null or [list], quoting text that YAML would misread") from None
    return params


def cmd_models(args) -> None:
    from .models import DEFAULT_MODEL, list_models

    rows = list_models()
    for r in rows:
        if r["name"] == DEFAULT_MODEL:
            r["name"] += " (default)"
    print(_table(rows, ["name", "kind", "status", "description"]))
    for r in rows:
        if r.get("terms"):
            print(f"\n{r['name'].split()[0]}: use of these weights is governed by their own terms of use: {r['terms']}")


def cmd_datasets(args) -> None:
    from .data import list_datasets

    print(_table(list_datasets(), ["name", "file", "description"]))


def cmd_analyses(args) -> None:
    from .analysis import list_analyses

    for spec in list_analyses():
        print(f"{spec.name}: {spec.title} — {spec.question}")
        print(f"    inputs: {', '.join(spec.inputs)}")
        for key, param in spec.all_params.items():
            print(f"    --set {key}={json.dumps(param.default)}   [{param.describe()}]"
                  + (f"  {param.help}" if param.help else ""))


def _hooks_from_arg(model, spec: str | None) -> list[str]:
    if not spec:
        return model.resid_hooks()
    hooks = []
    for part in spec.split(","):
        part = part.strip()
        if part in HOOK_GROUPS:
            hooks += model.hook_names(part)
        elif part:
            hooks.append(part)
    return hooks


def _model_kwargs(args) -> dict:
    return {"device": args.device, "dtype": args.dtype, "device_map": args.device_map, "max_memory": args.max_memory}


def cmd_extract(args) -> None:
    from .data import load_dataset
    from .models import load_model
    from .store import ActivationStore

    model = load_model(args.model, lazy=True, **_model_kwargs(args))
    dataset = load_dataset(args.data, args.text_column, args.label_column, limit=args.limit)
    hooks = _hooks_from_arg(model, args.hooks)
    store = ActivationStore(dtype=args.store_dtype, batch_tokens=args.batch_tokens)
    t0 = time.time()
    entry = store.get_or_extract(model, dataset, hooks, max_length=args.max_length, prepend_bos=args.prepend_bos,
                                 batch_size=args.batch_size, progress=_progress_bar("extract"), engine=args.engine,
                                 workers=args.workers, address=args.address)
    size = sum(f["bytes"] for f in entry.meta["files"].values())
    print(f"{'extracted' if entry.extracted else 'cache hit'}: {entry.key}  {entry.n_texts} texts, "
          f"{entry.n_tokens} tokens, {len(entry.hooks)} hooks, {size / 2**20:.1f} MiB, {time.time() - t0:.1f} s")
    print(f"  {entry.path}")
    if entry.meta["n_truncated"]:
        print("  warning: " + truncation_message(entry.meta["n_truncated"], entry.n_texts, entry.meta["max_length"],
                                                 model.max_length, option="--max-length"))


def cmd_run(args) -> None:
    from .analysis import run_analysis, run_many

    params = _parse_sets(args.set)
    out = _out_folder(args.out)
    if args.vectors and (args.model or args.data):
        raise WorkbenchError("Give either --vectors or --model/--data, not both.")
    if args.text and (args.data or args.vectors):
        raise WorkbenchError("Give --text or --data (or --vectors), not both.")
    models = [] if args.vectors else (args.model or [_default_model_for(args.analysis)])
    data = None if args.vectors else (args.data or _default_data_for(args.analysis))
    if args.text:
        from .data import TextDataset

        data = TextDataset.from_texts(args.text, name="text")
    t0 = time.time()
    kwargs = dict(data=data, vectors=args.vectors, params=params, progress=_progress_bar(args.analysis),
                  text_column=args.text_column, label_column=args.label_column, vector_column=args.vector_column,
                  **_model_kwargs(args))
    if len(models) > 1:  # repeated --model: one overlay of every model on the same inputs
        result = run_many(args.analysis, models, engine=args.engine, address=args.address, **kwargs)
    else:
        result = run_analysis(args.analysis, model=models[0] if models else None, engine=args.engine,
                              address=args.address, **kwargs)
    paths = result.save(out, static=not args.no_static)
    hits = [e["hit"] for e in result.manifest.get("cache", [])]
    cache_note = "" if not hits else (" (cache hit)" if all(hits) else " (extracted, now cached)")
    print(f"{args.analysis}: {len(result.table)} rows in {time.time() - t0:.1f} s{cache_note}")
    for warning in result.manifest.get("warnings", []):
        print(f"  warning: {warning}")
    for kind, path in paths.items():
        print(f"  {kind:8s} {path}")
    static = result.manifest.get("static_export", "")
    if static.startswith("skipped"):
        print(f"  note: PNG/SVG {static}")
    if result.summary:
        shown = {k: v for k, v in result.summary.items() if not isinstance(v, (list, dict)) or len(str(v)) < 200}
        print("  summary: " + json.dumps(shown, default=str)[:1500])


def cmd_batch(args) -> None:
    plan_path = Path(args.plan).resolve()
    plan = _read_plan(plan_path)
    # a relative `out:` in the plan is relative to the plan's folder; --out is relative to here
    out = _out_folder(args.out) if args.out else plan_path.parent / plan.get("out", "out/batch")
    out = _out_folder(str(out))
    params_by = plan.get("params") or {}
    placements = dict(_model_entries(plan))
    jobs = []
    for analysis, model, data, vec, label in plan_jobs({**plan, "models": list(placements) or None}):
        if vec is not None and not Path(vec).is_absolute():
            vec = str(plan_path.parent / vec)
        jobs.append({"analysis": analysis, "model": model, "data": data, "vectors": vec, "label": label,
                     "params": params_by.get(analysis, {}), "placement": placements.get(model, {})})
    rows = []
    try:
        if args.engine == "ray":
            from .distributed import run_jobs

            rows = run_jobs(jobs, out, static=not args.no_static, address=args.address)
        else:
            for n, job in enumerate(jobs, start=1):
                print(f"[{n}/{len(jobs)}] {job['label']}", flush=True)
                rows.append(run_batch_job(job, out, static=not args.no_static, progress=_progress_bar(job["analysis"])))
                if rows[-1]["status"] != "ok":
                    print(f"  {rows[-1]['status']}", file=sys.stderr)
    finally:
        _write_index(out, rows, plan_path)
    print(f"wrote {out / 'index.html'} ({sum(r['status'] == 'ok' for r in rows)}/{len(rows)} ok)")
    if any(r["status"] != "ok" for r in rows):
        sys.exit(1)


def cmd_reproduce(args) -> None:
    from .reproduce import README, all_tables, reproduce

    if args.list:
        for name, table in all_tables().items():
            print(f"{name}: {table.title} (about {table.minutes:g} min)")
            for job, command in table.jobs.items():
                print(f"    {job}: {command}")
        return
    reproduce(args.tables or None, out=args.out, force=args.force, readme=README if args.update_readme else None)


def cmd_app(args) -> None:
    import subprocess

    from .paths import PROJECT_ROOT

    cmd = [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app.py"), "--server.address", args.address,
           "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    sys.exit(subprocess.call(cmd))


def _model_args(p) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU when present, else the CPU) | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPUs that support it, float32 on the CPU) | "
                                                    "float32 | bfloat16 | float16")
    p.add_argument("--device-map", default=None, help="spread the model over several devices: auto | balanced "
                                                      "(transformers/accelerate)")
    p.add_argument("--max-memory", default=None, help="per-device budget with --device-map, e.g. 0=20GiB,1=20GiB,cpu=64GiB")


def _engine_args(p) -> None:
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (this process) or ray (tasks on a Ray cluster, one GPU each when there are GPUs)")
    p.add_argument("--address", default=None, help="Ray cluster: auto (a running one) or ray://HOST:PORT; "
                                                   "default: start a local cluster on 127.0.0.1")
    p.add_argument("--workers", type=_positive_int, default=None, help="Ray workers (slices of the dataset)")


def _data_args(p) -> None:
    p.add_argument("--text-column", help="text column of a csv/jsonl/parquet dataset")
    p.add_argument("--label-column", help="label column (optional)")


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="extract activations into the cache")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", required=True)
    p.add_argument("--hooks", help="comma-separated hook names or groups: " + ", ".join(HOOK_GROUPS))
    p.add_argument("--max-length", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=8, help="texts per forward pass (at most)")
    p.add_argument("--batch-tokens", type=_positive_int, default=8192,
                   help="padded tokens per forward pass (at most; halved on out-of-memory)")
    p.add_argument("--store-dtype", choices=["float32", "float16"], default="float32",
                   help="how activations are written (float16 halves the disk; analyses read float32)")
    p.add_argument("--limit", type=_positive_int, default=None, help="first N texts only")
    p.add_argument("--prepend-bos", type=_tristate, default=None,
                   help="true: every text starts with BOS; false: strip it; none: the tokenizer's own (default)")
    _engine_args(p)
    _model_args(p)
    _data_args(p)
    p.set_defaults(fn=cmd_extract)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run one analysis, writing result.parquet, figure.html, manifest.json")
    p.add_argument("analysis")
    p.add_argument("--model", action="append", help="repeat to overlay several models on the same data")
    p.add_argument("--data")
    p.add_argument("--text", action="append", help="a text to analyse, typed here (repeatable; instead of --data)")
    p.add_argument("--vectors", help=".npy, or parquet/csv of numeric columns (instead of --model/--data)")
    p.add_argument("--vector-column", help="the column of a parquet/csv vectors file holding one list per row")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="analysis parameter (repeatable)")
    p.add_argument("--no-static", action="store_true", help="skip PNG/SVG export")
    _model_args(p)
    _data_args(p)
    _engine_args(p)
    p.set_defaults(fn=cmd_run)


def _add_tools(sub) -> None:
    p = sub.add_parser("batch", help="run a plan: analyses x models x datasets into one folder with an index page")
    p.add_argument("plan")
    p.add_argument("--out")
    p.add_argument("--no-static", action="store_true")
    _engine_args(p)
    p.set_defaults(fn=cmd_batch)
    p = sub.add_parser("cache", help="inspect or clean the activation cache")
    p.add_argument("action", choices=["ls", "verify", "clean", "rm", "clear"])
    p.add_argument("key", nargs="?")
    p.set_defaults(fn=cmd_cache)
    p = sub.add_parser("reproduce", help="regenerate the README's results tables from the shipped commands")
    p.add_argument("tables", nargs="*", help="table names (default: all; see --list)")
    p.add_argument("--out", default="results", help="folder for every job's result, figure and manifest")
    p.add_argument("--update-readme", action="store_true", help="replace the tables' blocks in README.md")
    p.add_argument("--force", action="store_true", help="rerun jobs whose output is already there")
    p.add_argument("--list", action="store_true", help="list the tables and their commands")
    p.set_defaults(fn=cmd_reproduce)
    p = sub.add_parser("app", help="serve the Streamlit app (127.0.0.1 by default)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1")
    p.set_defaults(fn=cmd_app)


def build_parser(backends: bool = True) -> argparse.ArgumentParser:
    """The CLI; ``backends=False`` leaves out back-end commands (no back-end is imported then)."""
    parser = _Parser(prog="workbench", description="Interpretability and embedding-analysis workbench.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details; show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list built-in and cached models").set_defaults(fn=cmd_models)
    sub.add_parser("datasets", help="list built-in sample sets").set_defaults(fn=cmd_datasets)
    sub.add_parser("analyses", help="list analyses and their parameters").set_defaults(fn=cmd_analyses)
    _add_extract(sub)
    _add_run(sub)
    _add_tools(sub)
    if backends:
        _register_backend_commands(sub)
    return parser


CORE_COMMANDS = ("models", "datasets", "analyses", "extract", "run", "batch", "cache", "reproduce", "app")


def _register_backend_commands(sub) -> None:
    """Subcommands that back-ends declare on their spec (``AnalysisSpec.commands``, e.g. train-lens)."""
    try:
        from .registry import list_analyses

        specs = list_analyses()
    except Exception:  # a broken back-end must not break `workbench cache ls`
        logging.getLogger(__name__).debug("analysis discovery failed", exc_info=True)
        return
    for spec in specs:
        for command in spec.commands:
            command.setup(sub.add_parser(command.name, help=command.help))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    # core commands never import the back-ends just to build the parser (a fast `cache ls`)
    parser = build_parser(backends=command not in CORE_COMMANDS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    # `run` and `extract` print their own truncation line (naming the text set and the fix): not a second,
    # raw one. Other commands that extract (train-lens, train-sae, batch, compare) show the store's, on one line.
    plain_format = warnings.formatwarning
    try:
        with warnings.catch_warnings():
            if args.fn in (cmd_run, cmd_extract):
                warnings.filterwarnings("ignore", category=TruncationWarning)
            warnings.formatwarning = partial(_one_line_truncation, plain_format)
            args.fn(args)
    except WorkbenchError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        warnings.formatwarning = plain_format


def _one_line_truncation(plain_format, message, category, filename, lineno, line=None) -> str:
    """A TruncationWarning as ``warning: ...`` on a line of its own (a progress bar may hold the current one);
    it is about the input, not the code, so no source line."""
    if issubclass(category, TruncationWarning):
        return f"\nwarning: {message}\n"
    return plain_format(message, category, filename, lineno, line)


if __name__ == "__main__":
    main()
