"""``workbench compare``: one per-layer analysis on two (or more) models on the same data, side by side or as a
difference, in one result folder with one manifest (:mod:`workbench.compare`, built on ``run_many``).

    workbench compare layer_stats --model minilm-l6 --model smollm2-135m --data abstracts --out out/cmp
    workbench compare geometry --model smollm2-135m --model gemma3-270m --data abstracts --mode difference \\
        --set estimators=svd,cosine --out out/cmp

``--data`` once: every model on those texts. ``--data`` once per model is accepted only when they hold the
same texts (same content hash); otherwise one error says so.
"""

from __future__ import annotations

from workbench.registry import Command


def _setup(parser) -> None:
    from workbench.cli import _data_args, _engine_args, _model_args
    from workbench.compare import MODES

    parser.add_argument("analysis", help="a per-layer analysis (layer_stats, geometry, layer_quality, ...)")
    parser.add_argument("--model", action="append", required=True, help="a model; repeat (two or more)")
    parser.add_argument("--data", action="append", help="the dataset (once), or once per model (must be the same texts)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=[m for m in MODES if m != "single"], default="side_by_side",
                        help="side_by_side: every model's rows, one table; difference: other − baseline per layer")
    parser.add_argument("--baseline", help="the model subtracted in difference mode (default: the first --model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="analysis parameter (repeatable)")
    parser.add_argument("--no-static", action="store_true", help="skip PNG/SVG export")
    _model_args(parser)
    _data_args(parser)
    _engine_args(parser)
    parser.set_defaults(fn=_run)


def _run(args) -> None:
    import json
    import time

    from workbench.batch import _default_data_for
    from workbench.cli import _model_kwargs, _out_folder, _parse_sets, _progress_bar
    from workbench.compare import compare_command, run_compare, view
    from workbench.errors import WorkbenchError

    if len(args.model) < 2:
        raise WorkbenchError("compare needs at least two models: repeat --model (e.g. --model minilm-l6 --model "
                             "smollm2-135m).")
    if args.baseline and args.baseline not in args.model:
        raise WorkbenchError(f"--baseline {args.baseline} is not one of the --model values {args.model}.")
    out = _out_folder(args.out)
    data = args.data or [_default_data_for(args.analysis)]
    t0 = time.time()
    result = run_compare(args.analysis, args.model, data=data if len(data) > 1 else data[0],
                         params=_parse_sets(args.set), progress=_progress_bar(args.analysis),
                         text_column=args.text_column, label_column=args.label_column, engine=args.engine,
                         address=args.address, **_model_kwargs(args))
    baseline = None
    if args.mode == "difference" and args.baseline:  # the model's own name (a path resolves to its folder name)
        baseline = result.manifest["models"][args.model.index(args.baseline)]["name"]
    shown = view(result, args.mode, baseline=baseline)
    shown.manifest["cli"] = compare_command(result.manifest["cli"], args.mode, args.baseline)
    paths = shown.save(out, static=not args.no_static)
    print(f"compare {args.analysis} ({args.mode}): {len(shown.table)} rows, {len(args.model)} models in "
          f"{time.time() - t0:.1f} s")
    for warning in shown.manifest.get("warnings", []):
        print(f"  warning: {warning}")
    for kind, path in paths.items():
        print(f"  {kind:8s} {path}")
    if "comparison" in shown.summary:
        print("  comparison: " + json.dumps(shown.summary["comparison"], default=str))


COMPARE = Command("compare", "one per-layer analysis on two or more models on the same data: side by side or as a "
                             "difference, one result folder and manifest", _setup)
