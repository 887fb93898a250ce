"""What every SAE analysis does first: find (or train) the SAE, then read its corpus from the store.

An analysis names its SAE by the training settings (:data:`~.settings.TRAIN_PARAMS`) on the run's model
and data: the SAE with that identity is found in the cache (:func:`~.files.sae_dir`), or trained when
``train_missing`` is true (a README job therefore trains, then evaluates, from one command). Or it
names a folder (``sae=...``): any SAE in SAELens's layout, refused when it belongs to another model.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError
from workbench.params import Param

from . import files
from .features import Snippets, feature_rows, top_examples
from .inputs import StoreRows, Target, resolve_target, row_index, text_and_position
from .scan import scan
from .settings import TRAIN_PARAMS, max_length_for, resolve, settings_from
from .train import device_of, train_sae

SAE_PARAMS: dict[str, Param] = {
    **TRAIN_PARAMS,
    "sae": Param("", "an SAE folder (SAELens layout) to use instead of the one these settings name"),
    "train_missing": Param(True, "train the SAE when none with these settings is in the cache"),
}


@dataclass
class LoadedSAE:
    sae: object
    cfg: dict
    folder: Path
    target: Target
    settings: dict
    trained_now: bool = False
    command: str = ""

    @property
    def info(self) -> dict:
        return self.cfg.get("workbench") or {}

    def describe(self) -> dict:
        info = self.info
        return {"folder": str(self.folder), "fingerprint": info.get("sae_fingerprint"), "target": self.target.name,
                "hook": self.target.hook, "architecture": self.sae.architecture, "k": self.sae.k,
                "d_sae": self.sae.d_sae, "d_in": self.sae.d_in, "trained_now": self.trained_now,
                "data": info.get("data", {}).get("name"), "quality": info.get("quality"), "train_command": self.command,
                "training": {k: v for k, v in (info.get("training") or {}).items() if k != "log"}}


def train_command(model_name: str, data_ref: str | None, settings: dict) -> str:
    """The ``workbench train-sae`` line that trains the SAE these settings name."""
    parts = ["workbench", "train-sae", "--model", model_name, "--data", data_ref or "abstracts"]
    for key, param in TRAIN_PARAMS.items():
        if key in settings and settings[key] != param.default:
            parts += [f"--{key.replace('_', '-')}", str(settings[key]).lower() if isinstance(settings[key], bool)
                      else str(settings[key])]
    if int(settings.get("seed", 0)):
        parts += ["--seed", str(int(settings["seed"]))]
    return " ".join(shlex.quote(p) for p in parts)


def load_for_run(ctx) -> LoadedSAE:
    """The run's SAE: ``sae=FOLDER``, else the one these settings name (trained now if missing and allowed)."""
    model, p = ctx.require_model(), ctx.params
    device = device_of(model)
    if str(p["sae"]).strip():
        folder = Path(str(p["sae"])).expanduser()
        sae, cfg = files.load_sae(folder, device)
        files.check_model(cfg, model, folder)
        info = cfg.get("workbench") or {}
        target = resolve_target(model, info.get("target") or p["target"])
        settings = info.get("settings") or resolve(settings_from(_train_values(p), ctx.seed), sae.d_in,
                                                   target.token_level)
        data_name = (info.get("data") or {}).get("source") or (info.get("data") or {}).get("name")
        return LoadedSAE(sae, cfg, folder, target, settings,
                         command=train_command(info.get("model") or model.name, data_name, settings))
    target = resolve_target(model, p["target"])
    settings = resolve({**settings_from(_train_values(p), ctx.seed), "target": target.name}, model.d_model,
                       target.token_level)
    dataset = ctx.require_dataset().subset(int(settings["max_texts"]) or None)
    folder = files.sae_dir(files.identity(model, target, dataset, settings))
    trained = False
    if not files.is_complete(folder):
        if not p["train_missing"]:
            raise WorkbenchError(f"No SAE with these settings for {model.name} on {dataset.name} in the cache; train "
                                 f"it with `{train_command(model.name, ctx.data_ref, settings)}`, or set train_missing=true.")
        train_sae(model, ctx.dataset, ctx=ctx, progress=ctx.progress_fn, seed=ctx.seed, **_train_values(p))
        trained = True
    sae, cfg = files.load_sae(folder, device)
    return LoadedSAE(sae, cfg, folder, target, settings, trained, train_command(model.name, ctx.data_ref, settings))


def _train_values(p: dict) -> dict:
    return {k: p[k] for k in TRAIN_PARAMS}


@dataclass
class Corpus:
    """The run's texts as the SAE sees them: the store entry, every row, and the train / held-out splits."""

    entry: object
    dataset: object
    target: Target
    rows: StoreRows
    splits: dict = field(default_factory=dict)

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(text, position) of positions in :attr:`rows`."""
        return text_and_position(self.entry, self.target, self.rows.index[np.asarray(positions, dtype=np.int64)])


def corpus_for(ctx, loaded: LoadedSAE) -> Corpus:
    """Rows of the run's dataset (first ``max_texts``) at the SAE's hook; when it is the SAE's own training
    data, the splits are its training and held-out texts, else one split ``all``."""
    p, s, target = ctx.params, loaded.settings, loaded.target
    dataset = ctx.require_dataset().subset(int(p["max_texts"]) or None)
    entry = ctx.activations([target.hook], max_length=max_length_for(s), dataset=dataset)
    if int(entry.meta["shapes"][target.hook][-1]) != loaded.sae.d_in:
        raise WorkbenchError(f"the SAE reads vectors of dimension {loaded.sae.d_in}; {target.hook} of "
                             f"{ctx.model.name} has {entry.meta['shapes'][target.hook][-1]}.")
    skip = bool(s.get("skip_first")) and target.token_level
    texts = np.arange(entry.n_texts)
    corpus = Corpus(entry, dataset, target, StoreRows(entry, target.hook, row_index(entry, target, texts, skip)))
    data = loaded.info.get("data") or {}
    held = np.asarray(data.get("heldout_texts") or [], dtype=np.int64)
    if data.get("content_hash") == dataset.content_hash and len(held):
        train = np.setdiff1d(texts, held)
        corpus.splits = {"train": StoreRows(entry, target.hook, row_index(entry, target, train, skip)),
                         "heldout": StoreRows(entry, target.hook, row_index(entry, target, held, skip))}
    else:
        corpus.splits = {"all": corpus.rows}
        if data.get("content_hash") != dataset.content_hash:
            ctx.warn(f"the SAE was trained on {data.get('name', 'other data')}, not on {dataset.name}: its quality "
                     "here is on data it may not have seen.")
    return corpus


def feature_records(ctx, loaded: LoadedSAE, corpus: Corpus, *, top_n: int, window: int,
                    cooccurrence: bool = False, effects=None):
    """(one record per feature, the scan) over every row of the corpus (see :mod:`.features`)."""
    top_m = top_n * (4 if corpus.target.token_level else 1)
    result = scan(loaded.sae, corpus.rows, top_m=top_m, histogram=True, cooccurrence=cooccurrence,
                  progress=ctx.progress)
    snippets = Snippets(corpus.entry, corpus.dataset, corpus.target.token_level, window)
    examples = top_examples(result, snippets, corpus.locate, top_n)
    background = snippets.background(ctx.seed, corpus.rows.index)
    return feature_rows(result, examples, background, effects, text_of=snippets.words_text), result
