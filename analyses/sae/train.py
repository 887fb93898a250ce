"""Training an SAE on rows streamed from the activation store (docs/methods.md, "SAEs on embeddings and
residual streams").

- Batches: step ``t`` reads rows ``sort(perm_e[j·B:(j+1)·B])`` with ``e, j = divmod(t, n // B)`` and
  ``perm_e = numpy.random.default_rng([seed, e]).permutation(n)`` (``B = min(batch_size, n)``; the last
  partial batch of an epoch is left out). Only those rows are read: memory is one batch.
- Step: loss (:func:`~.sae.topk_loss` / :func:`~.sae.relu_loss`), backward, the decoder-gradient
  projection, gradient-norm clipping, Adam, decoder rows back to unit norm (saerch's order).
- Dead latents: a latent that has not fired for ``dead_rows`` rows (default one epoch, at most 10M) is
  dead; with ``dead_revival=auxk`` the auxiliary loss of Gao et al. makes dead latents reconstruct the
  residual error (no resampling). Dead latents at the end are counted on the training and held-out rows.
- Checkpoints (``checkpoint.safetensors`` + ``checkpoint.json``, atomically every ``checkpoint_every``
  steps): weights, Adam state, the firing counters and the loss log; a rerun with the same identity
  resumes from the latest and ends with identical weights. They are removed once the SAE is saved.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.data import vectors_hash
from workbench.paths import atomic_write

from . import files
from .inputs import ArrayRows, StoreRows, extract, resolve_target, row_index, split_texts
from .sae import SparseAutoencoder, relu_loss, topk_loss
from .scan import evaluate
from .settings import DEAD_ROWS_CAP, max_length_for, resolve, settings_from

INIT_SAMPLE = 4096
METHOD = ("TopK SAE (Gao et al. 2024) as in O'Neill et al. 2024 (arXiv 2408.00657, saerch/topk_sae.py): "
          "z = ReLU(TopK(W_enc (x - b_pre) + b_enc)), x_hat = W_dec z + b_pre, unit-norm decoder atoms")


class BatchOrder:
    """Row positions of each step (module docstring); the permutation of the current epoch is kept."""

    def __init__(self, n_rows: int, batch: int, seed: int):
        self.n_rows, self.batch, self.seed = int(n_rows), int(batch), int(seed)
        self.per_epoch = max(1, self.n_rows // self.batch)
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> np.ndarray:
        epoch, j = divmod(int(step), self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
        return np.sort(self._perm[j * self.batch:(j + 1) * self.batch])


def dead_steps_for(settings: dict, n_rows: int, batch: int) -> int:
    rows = int(settings["dead_rows"]) or min(n_rows, DEAD_ROWS_CAP)
    return max(1, math.ceil(rows / batch))


def init_sample(source, seed: int) -> np.ndarray:
    """A seeded sample of at most :data:`INIT_SAMPLE` rows (for ``b_dec``'s median)."""
    n = min(source.n_rows, INIT_SAMPLE)
    return source.rows(np.sort(np.random.default_rng([int(seed), 1]).choice(source.n_rows, n, replace=False)))


def loss_of(sae: SparseAutoencoder, x: torch.Tensor, fired: torch.Tensor, s: dict, dead_steps: int) -> dict:
    if s["architecture"] == "relu":
        return relu_loss(sae, x, fired, l1_coef=float(s["l1_coef"]))
    return topk_loss(sae, x, fired, multik=int(s["multik"]), multik_coef=float(s["multik_coef"]),
                     auxk=int(s["auxk"]), auxk_coef=float(s["auxk_coef"]) if s["dead_revival"] == "auxk" else 0.0,
                     dead_steps=dead_steps)


def train_step(sae: SparseAutoencoder, opt, x: torch.Tensor, fired: torch.Tensor, s: dict, dead_steps: int) -> dict:
    opt.zero_grad(set_to_none=True)
    out = loss_of(sae, x, fired, s, dead_steps)
    out["loss"].backward()
    sae.project_decoder_grad()
    if s["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), float(s["grad_clip"]))
    opt.step()
    sae.normalize_decoder()
    return out


# ---- checkpoints -------------------------------------------------------------------------------
def _save_checkpoint(folder: Path, sae, opt, fired: torch.Tensor, state: dict) -> None:
    tensors = {f"sae.{n}": p.detach().cpu().contiguous() for n, p in sae.named_parameters()}
    for n, p in sae.named_parameters():
        for key, value in opt.state.get(p, {}).items():
            tensors[f"adam.{n}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["steps_since_fired"] = fired.cpu().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".checkpoint.{os.getpid()}.safetensors"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "checkpoint.safetensors")
    with atomic_write(folder / "checkpoint.json") as handle:  # second: it names a complete file
        json.dump(state, handle)


def _restore(folder: Path, config: dict, sae, opt, fired: torch.Tensor) -> dict | None:
    meta, blob = folder / "checkpoint.json", folder / "checkpoint.safetensors"
    if not (meta.exists() and blob.exists()):
        return None
    state = json.loads(meta.read_text())
    if state.get("config") != json.loads(json.dumps(config, default=str)):
        return None
    tensors = load_file(str(blob))
    device = sae.W_enc.device
    with torch.no_grad():
        for n, p in sae.named_parameters():
            p.copy_(tensors[f"sae.{n}"])
            keys = [k for k in tensors if k.startswith(f"adam.{n}.")]
            if keys:
                opt.state[p] = {k.rsplit(".", 1)[1]: tensors[k].clone() if k.endswith(".step") else
                                tensors[k].to(device) for k in keys}
        fired.copy_(tensors["steps_since_fired"])
    return state


def _remove_checkpoint(folder: Path) -> None:
    for name in ("checkpoint.json", "checkpoint.safetensors"):
        (folder / name).unlink(missing_ok=True)


def _eta(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s" if math.isfinite(seconds) else "?"


def fit(source, s: dict, *, device="cpu", progress=None, folder: Path | None = None, config: dict | None = None,
        resume: bool = True, on_step=None) -> tuple[SparseAutoencoder, dict]:
    """Train an SAE on ``source`` with resolved settings ``s``; returns it and its training record.

    ``progress(done, total, message)`` (message with loss and ETA); ``on_step(step, out)`` gets every step's
    loss dict; with ``folder`` and ``config`` checkpoints are written there and resumed from when ``config``
    (the SAE's identity) matches.
    """
    seed, steps = int(s["seed"]), int(s["steps"])
    batch = min(int(s["batch_size"]), source.n_rows)
    order, dead_steps = BatchOrder(source.n_rows, batch, seed), dead_steps_for(s, source.n_rows, batch)
    sae = SparseAutoencoder(source.d, int(s["d_sae"]), int(s["k"]), s["architecture"]).to(device)
    sae.init_from_data(torch.from_numpy(init_sample(source, seed)), seed)
    opt = torch.optim.Adam(sae.parameters(), lr=float(s["lr"]))
    fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    state = {"config": config, "step": 0, "log": [], "train_seconds": 0.0}
    restored = _restore(folder, config, sae, opt, fired) if (resume and folder is not None and config) else None
    state = restored or state
    start, log_every = int(state["step"]), max(1, steps // 200)
    checkpoint_every = int(s.get("checkpoint_every", 0)) or steps
    t0 = time.time()
    for step in range(start, steps):
        x = torch.from_numpy(source.rows(order(step))).to(device)
        out = train_step(sae, opt, x, fired, s, dead_steps)
        if on_step is not None:
            on_step(step, out)
        done = step + 1
        source.release()  # the pages this batch touched (a minor fault each when read again)
        if done % log_every == 0 or done == steps:
            record = {"step": done, **{k: float(out[k].detach()) for k in ("loss", "recon", "multik", "auxk")},
                      "n_dead": int(out["n_dead"])}
            state["log"].append(record)
            if progress is not None:
                spent = time.time() - t0
                rate = (done - start) * batch / max(spent, 1e-9)
                progress(done, steps, f"step {done}/{steps}: nmse {record['recon']:.4f}, {record['n_dead']} dead, "
                                      f"{rate:.0f} rows/s, ETA {_eta(spent / (done - start) * (steps - done))}")
        if folder is not None and config and (done % checkpoint_every == 0) and done < steps:
            _save_checkpoint(folder, sae, opt, fired, {**state, "step": done,
                                                       "train_seconds": state["train_seconds"] + time.time() - t0})
    source.release()
    seconds = float(state["train_seconds"]) + time.time() - t0
    record = {"steps": steps, "batch_size": batch, "dead_steps": dead_steps, "resumed_from_step": start,
              "train_seconds": round(seconds, 2), "rows_per_second": round((steps - start) * batch / max(
                  time.time() - t0, 1e-9), 1), "log": state["log"], "device": str(device)}
    return sae.eval(), record


def device_of(model) -> torch.device:
    """Where the SAE trains: the model's device (its input device when spread over several)."""
    return model.input_device if model.device == "auto-map" else torch.device(model.device)


def deviations(s: dict, n_rows: int) -> list[str]:
    return [f"{s['steps']} steps of {min(s['batch_size'], n_rows)} rows ({n_rows} training rows) instead of 50 epochs "
            "over 270k abstracts (CPU budget)",
            f"lr {s['lr']:g} instead of 1e-4 (far fewer steps)",
            f"multik loss coefficient {s['multik_coef']:g} (Gao et al.) where the reference script sets it to 0",
            "b_pre initialised to the coordinate-wise median of a seeded sample of at most 4096 training rows"]


def train_on_array(X: np.ndarray, *, seed: int = 0, device="cpu", progress=None, on_step=None,
                   **settings) -> tuple[SparseAutoencoder, dict]:
    """Train an SAE on an in-memory matrix ``X [n, d]`` (no model, no store): returns (sae, record)."""
    source = ArrayRows(X)
    s = resolve(settings_from(settings, seed), source.d, target_token_level=False)
    sae, record = fit(source, s, device=device, progress=progress, on_step=on_step)
    record["settings"], record["data_sha256"] = s, vectors_hash(source.X)
    return sae, record


def train_sae(model, dataset, *, out_dir: str | Path | None = None, progress=None, resume: bool = True, store=None,
              ctx=None, seed: int = 0, on_step=None, **settings) -> Path:
    """Train an SAE on ``model``'s ``target`` over ``dataset`` and save it (SAELens layout); returns its folder.

    ``settings``: :data:`~.settings.TRAIN_PARAMS` (target, k, d_sae, steps, ...). The folder is
    ``out_dir`` or the SAE's cache folder (:func:`~.files.sae_dir`); an interrupted run resumes there.
    """
    s = settings_from(settings, seed)
    target = resolve_target(model, s["target"])
    s = resolve({**s, "target": target.name}, model.d_model, target.token_level)
    ds = dataset.subset(int(s["max_texts"]) or None)
    t0 = time.time()
    entry = extract(model, ds, target, max_length_for(s), ctx=ctx, store=store, progress=progress)
    t_extract = time.time() - t0
    train_texts, held_texts = split_texts(entry.n_texts, float(s["heldout_fraction"]), int(s["seed"]))
    train = StoreRows(entry, target.hook, row_index(entry, target, train_texts, s["skip_first"]))
    ident = files.identity(model, target, ds, s)
    folder = Path(out_dir) if out_dir is not None else files.sae_dir(ident)
    sae, record = fit(train, s, device=device_of(model), progress=progress, folder=folder, config=ident,
                      resume=resume, on_step=on_step)
    quality = {"train": evaluate(sae, train)}
    if len(held_texts):
        quality["heldout"] = evaluate(sae, StoreRows(entry, target.hook, row_index(entry, target, held_texts,
                                                                                   s["skip_first"])))
    density = torch.tensor(quality["train"].pop("density"))
    if "heldout" in quality:
        quality["heldout"].pop("density")
    info = {"sae_fingerprint": files.fingerprint(ident), "model": model.name, "model_fingerprint": model.fingerprint,
            "model_kind": model.kind, "target": target.name, "hook": target.hook, "layer": target.layer,
            "data": {"name": ds.name, "source": ds.source, "content_hash": ds.content_hash, "n_texts": entry.n_texts,
                     "cache_key": entry.key, "train_texts": len(train_texts), "train_rows": train.n_rows,
                     "heldout_texts": [int(i) for i in held_texts]},
            "settings": s, "identity": ident, "method": METHOD, "deviations": deviations(s, train.n_rows),
            "training": {**record, "extract_seconds": round(t_extract, 2)}, "quality": quality, "created": files.now()}
    files.save_sae(folder, sae, info, torch.log10(density + 1e-10))
    _remove_checkpoint(folder)
    return folder
