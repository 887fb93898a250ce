"""Training, saving and finding tuned lenses.

Recipe (official ``tuned_lens/scripts/train_loop.py`` defaults; docs/methods.md, "Logit and tuned lens"): loss
``KL(p_L || p_l)`` at the same position averaged over positions, all translators trained on the same
batch (one backward per layer), SGD with Nesterov momentum 0.9, lr 0.1 decaying linearly to 0 with no
warmup, weight decay 1e-3, gradient-norm clipping at 1.0 over all translator parameters, model frozen.

CPU-sized deviations (recorded in the lens JSON under ``deviations``): far fewer positions than the
official 250 steps × 2^18 tokens of the Pile; each step uses ``positions_per_step`` positions drawn
without replacement from a seeded random permutation of all positions of the training texts (one pass,
so no position is seen twice), at most ``max_length`` tokens per text, fp32 instead of bf16 autocast.

Training states come from the activation store: one extraction of every residual hook for the
training + held-out texts. Held-out texts are a seeded random split by text (no leakage of a text's
positions across the split). Checkpoints (``checkpoint.safetensors`` + ``checkpoint.json``, written
atomically every ``checkpoint_every`` steps) hold the translators and the momentum buffers; a rerun
with the same settings resumes from the latest one.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError
from workbench.paths import SAMPLE_DATA, atomic_write, cache_dir

from .core import CHUNK, TunedLens, Unembed, final_logprobs, kl_to_final

RECIPE = {"optimizer": "SGD", "nesterov": True, "momentum": 0.9, "lr": 0.1, "schedule": "linear decay to 0",
          "weight_decay": 1e-3, "grad_clip": 1.0, "loss": "KL(p_L || p_l), same position, mean over positions"}

#: CPU preset sized for a shared 2-core machine (~3.4 GFLOP per position for SmolLM2's 30 layers)
TRAIN_DEFAULTS = {"max_texts": 88, "heldout_texts": 8, "max_length": 128, "steps": 32, "positions_per_step": 64,
                  "heldout_positions": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "grad_clip": 1.0,
                  "seed": 0, "checkpoint_every": 4}

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
    return f"workbench train-lens --model {model_name} --data abstracts"


# --------------------------------------------------------------------------------------------
# States from the activation store
# --------------------------------------------------------------------------------------------
def states(entry, hook: str, index: np.ndarray, device=None) -> torch.Tensor:
    """float32 ``[len(index), D]`` residual states by global token index, read through the store (and
    moved to ``device``, where the lens computes)."""
    rows = torch.from_numpy(entry.rows(hook, index))
    return rows if device is None else rows.to(device)


def split_texts(n_texts: int, heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if heldout < 1 or heldout >= n_texts:
        raise WorkbenchError(f"heldout_texts must be between 1 and {n_texts - 1} (the dataset has {n_texts} texts).")
    perm = np.random.default_rng(seed).permutation(n_texts)
    return np.sort(perm[heldout:]), np.sort(perm[:heldout])


def positions_of(entry, texts: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(entry.offsets[i], entry.offsets[i + 1]) for i in texts]).astype(np.int64)


@torch.no_grad()
def heldout_kl(unembed: Unembed, entry, hooks: list[str], index: np.ndarray, tuned: TunedLens | None,
               chunk: int = CHUNK) -> np.ndarray:
    """Mean KL(p_L || p_l) in nats per layer 0..L over the positions ``index`` (float64 [L+1])."""
    L = len(hooks) - 1
    sums = np.zeros(L + 1, np.float64)
    for start in range(0, len(index), chunk):
        idx = index[start:start + chunk]
        logp_final = final_logprobs(unembed, states(entry, hooks[L], idx))
        for layer in range(L):
            h = states(entry, hooks[layer], idx)
            if tuned is not None:
                h = tuned.transform(h, layer)
            sums[layer] += float(kl_to_final(unembed(h), logp_final)) * len(idx)
    return sums / len(index)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _config_key(model, dataset, settings: dict) -> dict:
    return {"fingerprint": model.fingerprint, "data_hash": dataset.content_hash,
            **{k: settings[k] for k in sorted(settings) if k != "checkpoint_every"}}


def _save_checkpoint(folder: Path, lens: TunedLens, opt: torch.optim.Optimizer, state: dict) -> None:
    tensors = {"weight": lens.weight.detach().contiguous(), "bias": lens.bias.detach().contiguous()}
    for name, p in (("weight", lens.weight), ("bias", lens.bias)):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{name}"] = buf.contiguous()
    tmp = folder / f".checkpoint.{os.getpid()}.safetensors"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "checkpoint.safetensors")
    with atomic_write(folder / "checkpoint.json") as handle:  # written second: it names a complete file
        json.dump(state, handle, indent=1)


def _load_checkpoint(folder: Path, config: dict) -> tuple[dict, dict] | None:
    meta_path, tensor_path = folder / "checkpoint.json", folder / "checkpoint.safetensors"
    if not (meta_path.exists() and tensor_path.exists()):
        return None
    state = json.loads(meta_path.read_text())
    if state.get("config") != config:
        return None
    return state, load_file(str(tensor_path))


def train_tuned_lens(model, dataset, *, out_dir: Path | None = None, progress=None, resume: bool = True,
                     store=None, **overrides) -> dict:
    """Train a tuned lens for ``model`` on ``dataset`` and save it beside the model's fingerprint.

    Returns the lens JSON (settings, per-layer held-out KL of logit and tuned lens, timings).
    ``progress(done, total, message)`` is called once per step (message includes the ETA).
    """
    from workbench.store import ActivationStore

    settings = {**TRAIN_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(settings) - set(TRAIN_DEFAULTS)
    if unknown:
        raise WorkbenchError(f"Unknown training setting(s) {sorted(unknown)}; known: {sorted(TRAIN_DEFAULTS)}.")
    if model.kind != "decoder":
        raise WorkbenchError(f"A tuned lens needs a decoder-only model; {model.name} is a {model.kind}.")
    seed = int(settings["seed"])
    torch.manual_seed(seed)
    ds = dataset.subset(int(settings["max_texts"]))
    hooks = model.resid_hooks()
    L = len(hooks) - 1
    store = store or ActivationStore()
    t0 = time.time()
    entry = store.get_or_extract(model, ds, hooks, max_length=int(settings["max_length"]), progress=progress)
    t_extract = time.time() - t0
    train_texts, held_texts = split_texts(entry.n_texts, int(settings["heldout_texts"]), seed)
    rng = np.random.default_rng(seed + 1)
    train_pos = rng.permutation(positions_of(entry, train_texts))
    held_pos = positions_of(entry, held_texts)
    if len(held_pos) > settings["heldout_positions"]:
        held_pos = np.sort(rng.choice(held_pos, int(settings["heldout_positions"]), replace=False))
    steps, pps = int(settings["steps"]), int(settings["positions_per_step"])
    needed = steps * pps
    if needed > len(train_pos):
        raise WorkbenchError(
            f"{steps} steps × {pps} positions = {needed} positions, but the {len(train_texts)} training texts have "
            f"only {len(train_pos)}: raise max_texts or max_length, or lower steps / positions_per_step.")

    folder = Path(out_dir) if out_dir is not None else lens_dir(model.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    unembed = Unembed.from_model(model)
    lens = TunedLens(L, unembed.d_model)
    opt = torch.optim.SGD(lens.parameters(), lr=float(settings["lr"]), momentum=float(settings["momentum"]),
                          nesterov=True, weight_decay=float(settings["weight_decay"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    config = _config_key(model, ds, settings)
    start_step, losses, elapsed_before = 0, [], 0.0
    logit_heldout = None
    ckpt = _load_checkpoint(folder, config) if resume else None
    if ckpt is not None:
        state, tensors = ckpt
        with torch.no_grad():
            lens.weight.copy_(tensors["weight"])
            lens.bias.copy_(tensors["bias"])
        for name, p in (("weight", lens.weight), ("bias", lens.bias)):
            if f"momentum.{name}" in tensors:
                opt.state[p]["momentum_buffer"] = tensors[f"momentum.{name}"].clone()
        start_step, losses = int(state["step"]), list(state["losses"])
        elapsed_before = float(state.get("train_seconds", 0.0))
        logit_heldout = state.get("heldout_kl_logit")
        with warnings.catch_warnings():  # fast-forward the schedule (no optimizer step: expected)
            warnings.simplefilter("ignore")
            for _ in range(start_step):
                sched.step()
    if logit_heldout is None:
        logit_heldout = heldout_kl(unembed, entry, hooks, held_pos, None).tolist()

    t_train = time.time()
    for step in range(start_step, steps):
        idx = np.sort(train_pos[step * pps:(step + 1) * pps])
        with torch.no_grad():
            logp_final = final_logprobs(unembed, states(entry, hooks[L], idx))
        opt.zero_grad(set_to_none=False)
        total = 0.0
        per_layer = []
        for layer in range(L):
            h = states(entry, hooks[layer], idx)
            loss = kl_to_final(unembed(lens.transform(h, layer)), logp_final)
            loss.backward()  # one backward per layer: only one [pps, V] graph alive at a time
            per_layer.append(loss.item())
            total += per_layer[-1]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(lens.parameters(), float(settings["grad_clip"])))
        opt.step()
        sched.step()
        losses.append({"step": step + 1, "mean_kl": total / L, "grad_norm": grad_norm,
                       "kl_first": per_layer[0], "kl_last": per_layer[-1]})
        done = step + 1
        spent = time.time() - t_train
        eta = spent / (done - start_step) * (steps - done)
        if progress is not None:
            progress(done, steps, f"step {done}/{steps} train KL {total / L:.3f} nats, ETA {eta / 60:.1f} min")
        if done % int(settings["checkpoint_every"]) == 0 or done == steps:
            _save_checkpoint(folder, lens, opt, {
                "config": config, "step": done, "losses": losses, "heldout_kl_logit": logit_heldout,
                "train_seconds": elapsed_before + spent, "saved": time.time()})
    train_seconds = elapsed_before + (time.time() - t_train)
    tuned_heldout = heldout_kl(unembed, entry, hooks, held_pos, lens).tolist()
    meta = {
        "fingerprint": model.fingerprint, "model": model.name, "n_layers": L, "d_model": unembed.d_model,
        "method": "tuned lens (Belrose et al. 2023): h + A_l h + b_l per layer, zero-initialised",
        "recipe": RECIPE, "settings": settings,
        "data": {"name": ds.name, "content_hash": ds.content_hash, "n_texts": entry.n_texts,
                 "train_texts": int(len(train_texts)), "heldout_texts": [int(i) for i in held_texts],
                 "train_positions_available": int(len(train_pos)), "train_positions_used": steps * pps,
                 "heldout_positions": int(len(held_pos)), "cache_key": entry.key},
        "deviations": [
            f"{steps} steps × {pps} positions ({steps * pps} positions in all) instead of 250 × 2^18 tokens (CPU budget)",
            f"positions: a seeded random subset of the training texts' positions, each used once "
            f"({steps * pps} of {len(train_pos)})",
            f"sequences of at most {settings['max_length']} tokens from '{ds.name}' instead of 2048 from the Pile",
            "fp32 instead of bf16 autocast",
        ],
        "heldout_kl": {"layer": list(range(L + 1)), "logit_lens": logit_heldout, "tuned_lens": tuned_heldout},
        "losses": losses,
        "timings": {"extract_s": round(t_extract, 1), "train_s": round(train_seconds, 1),
                    "threads": torch.get_num_threads()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_lens(folder, lens, meta)
    return meta


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
