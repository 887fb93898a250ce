"""``workbench train-sae``: train an SAE with progress, ETA and resumable checkpoints; print its quality."""

from __future__ import annotations

import json

from workbench.registry import Command


def _boolean(text: str) -> bool:
    import argparse

    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return text.lower() == "true"


def _flag_type(param):
    return _boolean if param.type is bool else param.type


def _setup(parser) -> None:
    from .settings import TRAIN_PARAMS

    parser.add_argument("--model", default="minilm-l6", help="an embedder (target sentence) or a decoder (layer:L)")
    parser.add_argument("--data", default="abstracts", help="text corpus (built-in name or file)")
    parser.add_argument("--device", default="auto", help="where the model runs and the SAE trains: auto | cpu | cuda | "
                                                          "cuda:N | mps")
    parser.add_argument("--text-column", help="text column of a csv/jsonl/parquet dataset")
    parser.add_argument("--out", help="folder for the SAE (default: cache_dir()/saes/<model fingerprint>/...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="start over even if a matching checkpoint exists")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    for key, param in TRAIN_PARAMS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=_flag_type(param), default=None,
                            help=f"{param.help} (default {json.dumps(param.default)})")
    parser.set_defaults(fn=_run)


def _run(args) -> None:
    import torch

    from workbench.cli import _progress_bar
    from workbench.data import load_dataset
    from workbench.models import load_model

    from .files import read_config
    from .settings import TRAIN_PARAMS
    from .train import train_sae

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, lazy=True, device=args.device)
    dataset = load_dataset(args.data, args.text_column)
    settings = {k: getattr(args, k) for k in TRAIN_PARAMS}
    folder = train_sae(model, dataset, out_dir=args.out, progress=_progress_bar("train-sae"),
                       resume=not args.no_resume, seed=args.seed, **settings)
    info = read_config(folder)["workbench"]
    t = info["training"]
    print(f"SAE {info['sae_fingerprint']}\n  written to {folder}")
    print(f"  {t['steps']} steps of {t['batch_size']} rows in {t['train_seconds']:.0f} s "
          f"({t['rows_per_second']:.0f} rows/s; extraction {t['extract_seconds']:.0f} s)")
    for split, q in info["quality"].items():
        print(f"  {split:8s} FVU {q['fvu']:.4f}  L0 {q['l0']:.1f}  dead {q['dead']}/{info['settings']['d_sae']}  "
              f"dense {q['dense']}  ({q['n_rows']} rows)")


TRAIN_SAE = Command("train-sae", "train a sparse autoencoder on an embedder's sentence embeddings or a decoder's "
                                 "residual stream (SAELens layout)", _setup)
