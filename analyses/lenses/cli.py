"""``workbench train-lens``: train a tuned lens with progress, ETA and resumable checkpoints."""

from __future__ import annotations

import sys
import time

from workbench.registry import Command


def _setup(parser) -> None:
    from .training import RECIPES, SETTING_TYPES, TRAIN_DEFAULTS

    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="sampled", help="training corpus: 'sampled' (text sampled from the model "
                                                        "itself, max-texts of them; the default) or a dataset")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--text-column", help="text column of a csv/jsonl/parquet dataset")
    parser.add_argument("--out", help="folder for the lens (default: cache_dir()/lenses/<fingerprint>/)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a matching checkpoint exists")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    helps = {"optimizer": f"default {TRAIN_DEFAULTS['optimizer']}; the tuned-lens package's two options "
                          "(sgd is its default)",
             "momentum": "SGD's momentum, or Adam's beta1 (default 0.9)",
             "lr": "default: 1e-3 for adam, 0.1 for sgd (the package's defaults)",
             "warmup_steps": "default: min(1000, steps // 5) for adam, 0 for sgd"}
    for key, value in TRAIN_DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=SETTING_TYPES.get(key, type(value)), default=None,
                            choices=list(RECIPES) if key == "optimizer" else None,
                            help=helps.get(key, f"default {value}"))
    parser.set_defaults(fn=_run)


def _run(args) -> None:
    import torch
    from tqdm import tqdm

    from workbench.data import load_dataset
    from workbench.models import load_model

    from .train import TRAIN_DEFAULTS, heldout_table, lens_dir, train_tuned_lens

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    overrides = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
    bar = {"bar": None, "t0": time.time()}

    def progress(done: int, total: int, message: str = "") -> None:
        if bar["bar"] is None or bar["bar"].total != total:
            if bar["bar"] is not None:
                bar["bar"].close()
            # no tqdm rate/remaining: the messages carry an ETA from the steps of this process, which tqdm's
            # would contradict after a resume (its rate counts the restored steps as done in no time)
            bar["bar"] = tqdm(total=total, desc="train-lens", file=sys.stderr, initial=0,
                              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        bar["bar"].n = done
        bar["bar"].set_postfix_str(message[-70:], refresh=False)
        bar["bar"].refresh()

    if args.data == "sampled":
        from .corpus import sampled_corpus

        n = overrides["max_texts"] or TRAIN_DEFAULTS["max_texts"]
        dataset = sampled_corpus(model, n, max_new_tokens=overrides["max_length"] or TRAIN_DEFAULTS["max_length"],
                                 seed=overrides["seed"] or 0, progress=progress)
    else:
        dataset = load_dataset(args.data, args.text_column)
    out = args.out or lens_dir(model.fingerprint)
    meta = train_tuned_lens(model, dataset, out_dir=out, progress=progress, resume=not args.no_resume, **overrides)
    if bar["bar"] is not None:
        bar["bar"].close()
    print(f"tuned lens for {model.fingerprint} written to {out} "
          f"(train {meta['timings']['train_s']:.0f} s, extraction {meta['timings']['extract_s']:.0f} s)")
    print("held-out KL(final || layer) per layer:")
    print(heldout_table(meta))


TRAIN_LENS = Command("train-lens", "train a tuned lens (translators per layer) for a decoder model", _setup)
