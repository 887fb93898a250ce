"""Training a tuned lens (docs/methods.md, "Logit and tuned lens").

Recipe (the official ``tuned_lens/scripts/train_loop.py`` and ``ingredients.py``): loss ``KL(p_L || p_l)``
at the same position, averaged over positions; all translators on the same batch, one backward per
layer; weight decay 1e-3, gradient-norm clipping at 1.0 over all translator parameters; bf16 autocast
(``autocast``); the model frozen. The optimizer is one of the package's two options (``optimizer``):
Adam with amsgrad, betas (0.9, 0.999), lr 1e-3, linear warmup over min(1000, steps // 5) steps then
linear decay to 0 (our default: it meets the convergence rule on the CPU budget, see
analyses/lenses/README.md), or the package's default SGD with Nesterov momentum 0.9, lr 0.1 decaying
linearly to 0 without warmup. Deviations are recorded in the lens JSON (``deviations``): the budget
(``steps`` × ``positions_per_step`` instead of 250 × 2^18 tokens), the corpus (by default text
sampled from the model itself, :mod:`.corpus`, instead of the Pile), how positions are drawn (a
seeded permutation of all training positions, each used once), and, with a warmup, where the decay
ends (:func:`optimizer`).

Held-out evaluation is on real text the lens never trains on (``heldout_data``; or, with
``heldout_data=""``, a seeded split of the training texts), every ``eval_every`` steps: the curve is
saved, and the lens counts as converged when its mean held-out KL changes by less than
:data:`CONVERGED_CHANGE` over the last 20 % of the steps. Training states come from the activation
store; checkpoints (translators + optimizer state, atomic, every ``checkpoint_every`` steps) make a rerun
with the same settings resume to identical weights.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError
from workbench.paths import atomic_write

from .core import KL_CHUNK, TunedLens, Unembed, layers_kl_to_final

#: the official package's two optimizer options (``tuned_lens/scripts/ingredients.py``, ``Optimizer``);
#: ``recipe(settings)`` gives the one a lens was trained with, with the values that ran
RECIPES = {
    "sgd": {"optimizer": "SGD", "nesterov": True, "momentum": 0.9, "lr": 0.1,
            "schedule": "linear decay to 0 at the last step, no warmup"},
    "adam": {"optimizer": "Adam", "amsgrad": True, "betas": [0.9, 0.999], "lr": 1e-3,
             "schedule": "linear warmup over min(1000, steps // 5) steps, then linear decay to 0 at the last step"},
}
COMMON_RECIPE = {"weight_decay": 1e-3, "grad_clip": 1.0, "autocast": "bfloat16",
                 "loss": "KL(p_L || p_l), same position, mean over positions"}
#: the SGD recipe (kept under its old name: the official default)
RECIPE = {**RECIPES["sgd"], **COMMON_RECIPE}

#: the CPU preset: Adam for 400 steps × 512 positions (204,800) of 3,400 model-sampled texts, held out on
#: abstracts never trained on; the training states are stored in float16 (15 GB for SmolLM2, not 30 GB).
#: Adam rather than the package's default SGD: under SGD the gradient norm stays above the clip, the curve
#: falls as a power of the step and misses the convergence rule (see analyses/lenses/README.md)
TRAIN_DEFAULTS = {"max_texts": 3400, "max_length": 128, "steps": 400, "positions_per_step": 512,
                  "heldout_data": "abstracts[360:376]", "heldout_texts": 8, "heldout_positions": 512,
                  "eval_every": 10, "optimizer": "adam", "lr": None, "warmup_steps": None, "momentum": 0.9,
                  "weight_decay": 1e-3, "grad_clip": 1.0, "autocast": "auto", "seed": 0, "checkpoint_every": 5,
                  "store_dtype": "float16"}
#: the types of the settings whose default is None (resolved per optimizer by :func:`resolve_optimizer`)
SETTING_TYPES = {"lr": float, "warmup_steps": int}


def resolve_optimizer(settings: dict) -> dict:
    """Fill ``lr`` and ``warmup_steps`` left at None with the optimizer's official defaults: SGD lr 0.1
    (the package's 1.0 × (1 − momentum)) and no warmup; Adam lr 1e-3 and min(1000, steps // 5) warmup
    steps (the package's documented default; see :func:`optimizer` for how its decay differs)."""
    name = settings["optimizer"]
    if name not in RECIPES:
        raise WorkbenchError(f"optimizer must be one of {sorted(RECIPES)}; got {name!r}.")
    lr = settings["lr"] if settings["lr"] is not None else (
        1e-3 if name == "adam" else 1.0 * (1 - float(settings["momentum"])))
    warmup = settings["warmup_steps"] if settings["warmup_steps"] is not None else (
        min(1000, int(settings["steps"]) // 5) if name == "adam" else 0)
    if not 0 <= int(warmup) < int(settings["steps"]):
        raise WorkbenchError(f"warmup_steps must be between 0 and steps - 1 ({int(settings['steps']) - 1}); got {warmup}.")
    if not float(lr) > 0:
        raise WorkbenchError(f"lr must be positive; got {lr}.")
    return {**settings, "lr": round(float(lr), 12), "warmup_steps": int(warmup)}


def recipe(settings: dict) -> dict:
    """The recipe a lens trained with ``settings`` (resolved) ran: the optimizer's, with its values."""
    out = {**RECIPES[settings["optimizer"]], **COMMON_RECIPE, "lr": settings["lr"],
           "weight_decay": settings["weight_decay"], "grad_clip": settings["grad_clip"]}
    if settings["optimizer"] == "adam":
        out["betas"] = [settings["momentum"], 0.999]
        out["schedule"] = (f"linear warmup over {settings['warmup_steps']} steps, then linear decay to 0 "
                           "at the last step")
    else:
        out["momentum"] = settings["momentum"]
    return out
#: a lens is converged when its held-out KL moved by less than this over the last 20 % of the steps
CONVERGED_CHANGE = 0.02


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


def _autocast(setting: str, device: torch.device):
    if setting in ("none", "", None):
        return nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, setting))


#: positions whose states (every layer) are gathered at once for the held-out KL
HELDOUT_BLOCK = 1024


def matmul_dtype(autocast: str) -> torch.dtype:
    """The dtype of the unembedding matmuls under an ``autocast`` setting (as torch.autocast runs them)."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(autocast), torch.float32)


def normalised_states(unembed: Unembed, entry, hooks: list[str], idx: np.ndarray, tuned: TunedLens | None,
                      autocast: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [L, N, D], x_final [N, D])``: every layer's states at ``idx`` through the translator (when
    ``tuned``) and the final norm, and the last layer's normalised states (no translator, fp32)."""
    L = len(hooks) - 1
    device = unembed.device
    with torch.no_grad():
        x_final = unembed.norm(states(entry, hooks[L], idx, device)).float()
    layers = []
    with _autocast(autocast, device):
        for layer in range(L):
            h = states(entry, hooks[layer], idx, device)
            layers.append(unembed.norm(h if tuned is None else tuned.transform(h, layer)).float())
    return torch.stack(layers), x_final


@torch.no_grad()
def heldout_kl(unembed: Unembed, entry, hooks: list[str], index: np.ndarray, tuned: TunedLens | None,
               chunk: int = KL_CHUNK) -> np.ndarray:
    """Mean KL(p_L || p_l) in nats per layer 0..L over the positions ``index`` (float64 [L+1]), fp32."""
    L = len(hooks) - 1
    sums = np.zeros(L + 1, np.float64)
    for start in range(0, len(index), HELDOUT_BLOCK):
        idx = index[start:start + HELDOUT_BLOCK]
        x, x_final = normalised_states(unembed, entry, hooks, idx, tuned)
        sums[:L] += layers_kl_to_final(unembed, x, x_final, torch.float32, chunk).double().cpu().numpy() * len(idx)
    return sums / len(index)


def train_step(unembed: Unembed, entry, hooks: list[str], lens: TunedLens, idx: np.ndarray,
               autocast: str) -> list[float]:
    """Backward of every layer's loss on the positions ``idx`` (gradients accumulate; the optimizer
    steps outside). Returns the per-layer KL in nats.

    The translators and the final norm run under ``autocast`` (as the official loop's ``lens(h)``); the
    unembedding, softmax and KL run in :func:`.core.layers_kl_to_final`, chunked over positions, with
    the matmuls in the autocast dtype, so no tensor larger than ``chunk × V`` is built. The gradient of
    the summed losses is the sum of the official per-layer backwards."""
    x, x_final = normalised_states(unembed, entry, hooks, idx, lens, autocast)
    losses = layers_kl_to_final(unembed, x, x_final, matmul_dtype(autocast))
    losses.sum().backward()
    return losses.detach().cpu().tolist()


#: optimizer-state keys renamed in checkpoints (SGD's buffer keeps the name older checkpoints used)
_STATE_KEYS = {"momentum_buffer": "momentum"}


class Checkpoints:
    """``checkpoint.safetensors`` (translators + the optimizer's per-parameter state) and
    ``checkpoint.json`` (its step, losses, curve), written atomically; a checkpoint is reused only by a
    run with the same config.

    Optimizer state tensors are stored as ``<key>.<param>``: SGD's ``momentum_buffer`` under the key
    ``momentum``; Adam's ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` and ``step`` under their own
    names (all tensors, so safetensors holds them; nothing is pickled)."""

    def __init__(self, folder: Path, config: dict):
        self.folder, self.config = Path(folder), config

    def save(self, lens: TunedLens, opt: torch.optim.Optimizer, state: dict) -> None:
        tensors = {"weight": lens.weight.detach().contiguous().cpu(), "bias": lens.bias.detach().contiguous().cpu()}
        for name, p in (("weight", lens.weight), ("bias", lens.bias)):
            for key, value in opt.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"{_STATE_KEYS.get(key, key)}.{name}"] = value.detach().contiguous().cpu()
        tmp = self.folder / f".checkpoint.{os.getpid()}.safetensors"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.folder / "checkpoint.safetensors")
        with atomic_write(self.folder / "checkpoint.json") as handle:  # written second: it names a complete file
            json.dump({**state, "config": self.config}, handle, indent=1)

    def restore(self, lens: TunedLens, opt: torch.optim.Optimizer, sched) -> dict | None:
        meta_path, tensor_path = self.folder / "checkpoint.json", self.folder / "checkpoint.safetensors"
        if not (meta_path.exists() and tensor_path.exists()):
            return None
        state = json.loads(meta_path.read_text())
        if state.get("config") != self.config:
            return None
        tensors = load_file(str(tensor_path))
        device = lens.weight.device
        with torch.no_grad():
            lens.weight.copy_(tensors["weight"])
            lens.bias.copy_(tensors["bias"])
        stored = {v: k for k, v in _STATE_KEYS.items()}
        for name, p in (("weight", lens.weight), ("bias", lens.bias)):
            for key in [k[:-len(name) - 1] for k in tensors if k.endswith(f".{name}") and k != name]:
                value = tensors[f"{key}.{name}"].clone()
                # Adam keeps ``step`` on the CPU unless it runs fused/capturable; the rest lives with p
                opt.state[p][stored.get(key, key)] = value if key == "step" else value.to(device)
        with warnings.catch_warnings():  # fast-forward the schedule (no optimizer step: expected)
            warnings.simplefilter("ignore")
            for _ in range(int(state["step"])):
                sched.step()
        return state


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """The learning-rate multiplier before optimizer step ``step`` (0-based): ``step / warmup`` during
    the warmup, then linear decay that reaches 0 at ``steps`` (the end of the run)."""
    if step < warmup:
        return step / warmup
    return max(0.0, (steps - step) / (steps - warmup))


def optimizer(lens: TunedLens, settings: dict):
    """The optimizer and schedule of ``settings`` (resolved by :func:`resolve_optimizer`), as the official
    package builds them: SGD with Nesterov momentum, or Adam with amsgrad and betas (momentum, 0.999).

    The schedule is linear warmup then linear decay to 0 *at the last step*. The package passes
    ``num_steps - warmup`` as the decay length (``get_linear_schedule_with_warmup``), so with a warmup
    its lr reaches 0 at ``num_steps - warmup`` and the rest of the run is frozen; ours ends the decay
    at ``steps`` (a recorded deviation; identical when the warmup is 0, as for SGD)."""
    steps, warmup = int(settings["steps"]), int(settings["warmup_steps"])
    if settings["optimizer"] == "adam":
        opt = torch.optim.Adam(lens.parameters(), lr=float(settings["lr"]), amsgrad=True,
                               betas=(float(settings["momentum"]), 0.999), weight_decay=float(settings["weight_decay"]))
    else:
        opt = torch.optim.SGD(lens.parameters(), lr=float(settings["lr"]), momentum=float(settings["momentum"]),
                              nesterov=True, weight_decay=float(settings["weight_decay"]))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))


def convergence(curve: list[dict], steps: int) -> dict:
    """How much the mean held-out KL moved over the last 20 % of the steps (relative)."""
    if len(curve) < 2:
        return {"converged": False, "relative_change_last_20pct": None}
    cut = steps - max(1, round(0.2 * steps))
    before = [c for c in curve if c["step"] <= cut]
    start = before[-1]["mean_kl"] if before else curve[0]["mean_kl"]
    end = curve[-1]["mean_kl"]
    change = abs(end - start) / max(abs(start), 1e-12)
    return {"converged": bool(change < CONVERGED_CHANGE), "relative_change_last_20pct": round(change, 6),
            "from_step": before[-1]["step"] if before else curve[0]["step"], "threshold": CONVERGED_CHANGE}
