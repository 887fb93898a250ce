"""Finding, saving and training tuned lenses.

Lenses live beside the model's fingerprint: ``cache_dir()/lenses/<fingerprint>/`` (trained here) or
``sample_data/lenses/<fingerprint>/`` (shipped); a lens matches only the exact fingerprint. The
training loop is :mod:`.training`; its corpus by default text sampled from the model (:mod:`.corpus`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError
from workbench.paths import SAMPLE_DATA, atomic_write, cache_dir

from .core import TunedLens, Unembed
from .training import (RECIPE, TRAIN_DEFAULTS, Checkpoints, convergence, heldout_kl, optimizer,  # noqa: F401
                       positions_of, recipe, resolve_optimizer, split_texts, states, train_step)

LENS_FILE = "lens.safetensors"
META_FILE = "lens.json"


# --------------------------------------------------------------------------------------------
# Where lenses live
# --------------------------------------------------------------------------------------------
def safe_name(fingerprint: str) -> str:
    """A folder name for a model fingerprint (``name@hash:dtype`` -> ``name_hash_dtype``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint).strip("_")


def lens_dir(fingerprint: str) -> Path:
    """``cache_dir()/lenses/<fingerprint-safe-name>/``: where trained lenses are written."""
    return cache_dir() / "lenses" / safe_name(fingerprint)


def shipped_lens_dir(fingerprint: str) -> Path:
    return SAMPLE_DATA / "lenses" / safe_name(fingerprint)


def find_lens(model) -> Path | None:
    """The folder of a trained lens for ``model`` (cache first, then ``sample_data/lenses``), or None.

    A lens matches when its JSON names the model's exact fingerprint (weights hash and dtype).
    """
    for folder in (lens_dir(model.fingerprint), shipped_lens_dir(model.fingerprint)):
        meta_path = folder / META_FILE
        if meta_path.exists() and (folder / LENS_FILE).exists():
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError:
                continue
            if meta.get("fingerprint") == model.fingerprint:
                return folder
    return None


def load_lens(folder: Path) -> tuple[TunedLens, dict]:
    meta = json.loads((Path(folder) / META_FILE).read_text())
    return TunedLens.from_state(load_file(str(Path(folder) / LENS_FILE))), meta


def train_command_hint(model_name: str) -> str:
    return f"workbench train-lens --model {model_name} --data sampled"


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _settings(overrides: dict) -> dict:
    settings = {**TRAIN_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(settings) - set(TRAIN_DEFAULTS)
    if unknown:
        raise WorkbenchError(f"Unknown training setting(s) {sorted(unknown)}; known: {sorted(TRAIN_DEFAULTS)}.")
    if settings["autocast"] not in ("auto", "bfloat16", "float16", "none"):
        raise WorkbenchError(f"autocast must be auto, bfloat16, float16 or none; got {settings['autocast']!r}.")
    if settings["store_dtype"] not in ("float32", "float16"):
        raise WorkbenchError(f"store_dtype must be float32 or float16; got {settings['store_dtype']!r}.")
    return resolve_optimizer(settings)


def _resolve_autocast(settings: dict, device) -> dict:
    """``autocast="auto"`` becomes ``bfloat16`` where ``device`` (the one the lens trains on) does bf16
    natively, else ``none`` (emulated bf16 is about 24x slower than fp32 on an AVX2-only CPU:
    :mod:`workbench.hardware`), so the settings recorded with a lens say what ran."""
    from workbench.hardware import native_bf16

    if settings["autocast"] != "auto":
        return settings
    return {**settings, "autocast": "bfloat16" if native_bf16(device) else "none"}


def _states(model, dataset, settings: dict, store, progress) -> dict:
    """Training and held-out states from the store, and the positions of each (seeded)."""
    from workbench.data import load_dataset

    from workbench.store import ActivationStore

    seed = int(settings["seed"])
    hooks = model.resid_hooks()
    ds = dataset.subset(int(settings["max_texts"]))
    # store_dtype=float16 halves the training states on disk (a large corpus then stays in the page cache);
    # the held-out states are read from ``store`` as it is (float32 by default)
    train_store = (store if settings["store_dtype"] == store.dtype
                   else ActivationStore(root=store.root, max_bytes=store.max_bytes, shard_bytes=store.shard_bytes,
                                     dtype=settings["store_dtype"], batch_tokens=store.batch_tokens))
    entry = train_store.get_or_extract(model, ds, hooks, max_length=int(settings["max_length"]), progress=progress)
    rng = np.random.default_rng(seed + 1)
    if settings["heldout_data"]:
        held_ds = load_dataset(settings["heldout_data"]).subset(int(settings["heldout_texts"]))
        held_entry = store.get_or_extract(model, held_ds, hooks, max_length=int(settings["max_length"]))
        train_texts, held_texts = np.arange(entry.n_texts), np.arange(held_entry.n_texts)
        held_name = held_ds.name
    else:  # a seeded split of the training texts (no position of a text crosses the split)
        held_entry, held_name = entry, f"{ds.name} (held-out split)"
        train_texts, held_texts = split_texts(entry.n_texts, int(settings["heldout_texts"]), seed)
    train_pos = rng.permutation(positions_of(entry, train_texts))
    held_pos = positions_of(held_entry, held_texts)
    if len(held_pos) > settings["heldout_positions"]:
        held_pos = np.sort(rng.choice(held_pos, int(settings["heldout_positions"]), replace=False))
    steps, pps = int(settings["steps"]), int(settings["positions_per_step"])
    if steps * pps > len(train_pos):
        raise WorkbenchError(
            f"{steps} steps × {pps} positions = {steps * pps} positions, but the {len(train_texts)} training texts "
            f"have only {len(train_pos)}: raise max_texts or max_length, or lower steps / positions_per_step.")
    return {"hooks": hooks, "dataset": ds, "entry": entry, "held_entry": held_entry, "held_name": held_name,
            "train_pos": train_pos, "held_pos": held_pos, "held_texts": held_texts, "n_train_texts": len(train_texts)}


def train_tuned_lens(model, dataset, *, out_dir: Path | None = None, progress=None, resume: bool = True,
                     store=None, **overrides) -> dict:
    """Train a tuned lens for ``model`` on ``dataset`` and save it beside the model's fingerprint.

    Returns the lens JSON (settings, per-layer held-out KL of logit and tuned lens, the held-out
    curve and whether it converged, losses, timings). ``progress(done, total, message)`` is called
    once per step (the message has the ETA). See :mod:`.training` for the recipe.
    """
    from workbench.store import ActivationStore

    settings = _settings(overrides)
    if model.kind != "decoder":
        raise WorkbenchError(f"A tuned lens needs a decoder-only model; {model.name} is a {model.kind}.")
    torch.manual_seed(int(settings["seed"]))
    t0 = time.time()
    run = _states(model, dataset, settings, store or ActivationStore(), progress)
    t_extract = time.time() - t0
    folder = Path(out_dir) if out_dir is not None else lens_dir(model.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    unembed = Unembed.from_model(model)
    settings = _resolve_autocast(settings, unembed.device)
    L = len(run["hooks"]) - 1
    lens = TunedLens(L, unembed.d_model).to(unembed.device)
    opt, sched = optimizer(lens, settings)
    config = {"fingerprint": model.fingerprint, "data_hash": run["dataset"].content_hash,
              **{k: settings[k] for k in sorted(settings) if k != "checkpoint_every"}}
    ckpt = Checkpoints(folder, config)
    state = (ckpt.restore(lens, opt, sched) if resume else None) or {}
    held = (unembed, run["held_entry"], run["hooks"], run["held_pos"])
    logit_heldout = state.get("heldout_kl_logit") or heldout_kl(*held, None).tolist()
    log = {"losses": list(state.get("losses", [])), "curve": list(state.get("curve", [])),
           "train_seconds": float(state.get("train_seconds", 0.0)), "start": int(state.get("step", 0))}
    _loop(lens, opt, sched, unembed, run, settings, ckpt, logit_heldout, log, progress)
    tuned_heldout = heldout_kl(*held, lens).tolist()
    meta = _lens_meta(model, run, settings, unembed, logit_heldout, tuned_heldout, log, t_extract)
    save_lens(folder, lens, meta)
    return meta


def _loop(lens, opt, sched, unembed, run, settings, ckpt, logit_heldout, log, progress) -> None:
    """Steps ``log['start']``..``steps``: gradients of every layer, clip, step; held-out curve; checkpoints."""
    steps, pps = int(settings["steps"]), int(settings["positions_per_step"])
    held = (unembed, run["held_entry"], run["hooks"], run["held_pos"])
    t_train = time.time()
    for step in range(log["start"], steps):
        idx = np.sort(run["train_pos"][step * pps:(step + 1) * pps])
        opt.zero_grad(set_to_none=False)
        per_layer = train_step(unembed, run["entry"], run["hooks"], lens, idx, str(settings["autocast"]))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(lens.parameters(), float(settings["grad_clip"])))
        opt.step()
        sched.step()
        done = step + 1
        log["losses"].append({"step": done, "mean_kl": float(np.mean(per_layer)), "grad_norm": grad_norm,
                              "kl_first": per_layer[0], "kl_last": per_layer[-1]})
        if done % int(settings["eval_every"]) == 0 or done == steps:
            kl = heldout_kl(*held, lens)
            log["curve"].append({"step": done, "mean_kl": float(kl[:-1].mean()), "per_layer": kl.round(5).tolist()})
        spent = time.time() - t_train
        if progress is not None:
            eta = spent / (done - log["start"]) * (steps - done)
            progress(done, steps, f"step {done}/{steps} train KL {np.mean(per_layer):.3f} nats, ETA {eta / 60:.1f} min")
        if done % int(settings["checkpoint_every"]) == 0 or done == steps:
            ckpt.save(lens, opt, {"step": done, "losses": log["losses"], "curve": log["curve"],
                                  "heldout_kl_logit": logit_heldout, "train_seconds": log["train_seconds"] + spent,
                                  "saved": time.time()})
    log["train_seconds"] += time.time() - t_train


def _lens_meta(model, run, settings, unembed, logit_heldout, tuned_heldout, log, t_extract) -> dict:
    steps, pps = int(settings["steps"]), int(settings["positions_per_step"])
    ds = run["dataset"]
    sampled = str(getattr(ds, "source", "")).startswith(str(cache_dir() / "corpora"))
    return {
        "fingerprint": model.fingerprint, "model": model.name, "n_layers": len(run["hooks"]) - 1,
        "d_model": unembed.d_model, "method": "tuned lens (Belrose et al. 2023): h + A_l h + b_l per layer, zero-initialised",
        "recipe": recipe(settings), "settings": settings,
        "data": {"name": ds.name, "content_hash": ds.content_hash, "n_texts": run["entry"].n_texts,
                 "train_texts": run["n_train_texts"], "heldout": run["held_name"],
                 "heldout_texts": [int(i) for i in run["held_texts"]],
                 "train_positions_available": int(len(run["train_pos"])), "train_positions_used": steps * pps,
                 "heldout_positions": int(len(run["held_pos"])), "cache_key": run["entry"].key},
        "deviations": [
            f"{steps} steps × {pps} positions ({steps * pps} positions in all) instead of 250 × 2^18 tokens (CPU budget)",
            f"positions: a seeded random subset of the training texts' positions, each used once "
            f"({steps * pps} of {len(run['train_pos'])})",
            (f"corpus: {ds.name}, text sampled from the model itself at temperature 1 from varied short openers, "
             "instead of the Pile" if sampled else f"corpus: '{ds.name}' instead of the Pile")
            + f"; sequences of at most {settings['max_length']} tokens instead of 2048",
        ] + ([] if settings["autocast"] == "bfloat16" else [f"autocast {settings['autocast']} instead of bfloat16"])
        + ([] if not settings["warmup_steps"] else
           [f"learning rate: {settings['warmup_steps']} warmup steps, then linear decay ending at the last step "
            f"(the package's schedule ends its decay at steps - warmup = {steps - settings['warmup_steps']}, "
            "leaving the rest of the run at lr 0)"])
        + ([] if settings["store_dtype"] == "float32" else
           [f"training states read from the activation store in {settings['store_dtype']} (the model's own "
            "float32 states rounded once; held-out states stay float32)"]),
        "heldout_kl": {"layer": list(range(len(run["hooks"]))), "logit_lens": logit_heldout, "tuned_lens": tuned_heldout},
        "curve": log["curve"], "convergence": convergence(log["curve"], steps), "losses": log["losses"],
        "timings": {"extract_s": round(t_extract, 1), "train_s": round(log["train_seconds"], 1),
                    "threads": torch.get_num_threads()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save_lens(folder: Path, lens: TunedLens, meta: dict, dtype: torch.dtype = torch.float32) -> None:
    """Write ``lens.safetensors`` (weight [L, D, D], bias [L, D]) and ``lens.json`` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "dtype": str(dtype).replace("torch.", "")}
    tmp = folder / f".lens.{os.getpid()}.safetensors"
    save_file(lens.state(dtype), str(tmp), metadata={"fingerprint": meta["fingerprint"]})
    os.replace(tmp, folder / LENS_FILE)
    with atomic_write(folder / META_FILE) as handle:
        json.dump(meta, handle, indent=1)


def heldout_table(meta: dict) -> str:
    """The per-layer held-out KL table (markdown) of a trained lens's JSON."""
    kl = meta["heldout_kl"]
    lines = ["| layer | logit lens KL (nats) | tuned lens KL (nats) |", "|---:|---:|---:|"]
    for layer, a, b in zip(kl["layer"], kl["logit_lens"], kl["tuned_lens"]):
        lines.append(f"| {layer} | {a:.4f} | {b:.4f} |")
    return "\n".join(lines)


def format_eta(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s" if math.isfinite(seconds) else "?"


def export_lens(src: Path, dest_root: Path | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a trained lens to ``sample_data/lenses/<fingerprint>/`` (fp16 by default, ~20 MB for SmolLM2)."""
    lens, meta = load_lens(src)
    dest = (Path(dest_root) if dest_root is not None else SAMPLE_DATA / "lenses") / safe_name(meta["fingerprint"])
    meta = {**meta, "exported_from": str(src), "note": f"weights rounded to {str(dtype).replace('torch.', '')}; "
            "heldout_kl was measured with the fp32 weights before rounding"}
    save_lens(dest, lens, meta, dtype=dtype)
    return dest
