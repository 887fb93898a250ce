"""Half precision on the real built-in decoder: bf16 and fp16 runs equal the fp32 ones within the
stated tolerances (measured on smollm2-135m on the CPU; the README's "Devices and dtypes" lists them).

| quantity | bf16 tolerance | fp16 tolerance |
|---|---|---|
| layer_stats mean_norm, cos_prev, top_pc_variance (relative, max over layers) | 5 % | 0.5 % |
| geometry svd, cosine, twonn (relative, max over layers) | 5 % | 1 % |
| logit lens KL (mean |difference|, nats) | 0.3 | 0.05 |
| logit lens top-1 agreement | >= 97 % | >= 99 % |
"""

import numpy as np
import pytest

from workbench.analysis import run_analysis
from workbench.models import LOAD_CHECK_TOLERANCE, load_model

pytestmark = pytest.mark.slow

TOL = {"bfloat16": {"rel": 0.05, "kl": 0.3, "top1": 0.97, "geo": 0.05},
       "float16": {"rel": 0.005, "kl": 0.05, "top1": 0.99, "geo": 0.01}}
LS = {"max_texts": 8, "max_length": 64}
LENS = {"max_texts": 4, "max_length": 32}
GEO = {"max_texts": 8, "max_length": 64, "estimators": "svd,cosine,twonn", "n_boot": 0, "n_boot_spectrum": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from workbench.store import ActivationStore

    return ActivationStore(root=tmp_path_factory.mktemp("dtype_store"))


def _runs(dtype, store):
    return (run_analysis("layer_stats", model="smollm2-135m", data="abstracts", params=LS, dtype=dtype, store=store),
            run_analysis("logit_lens", model="smollm2-135m", data="prompts", params=LENS, dtype=dtype, store=store),
            run_analysis("geometry", model="smollm2-135m", data="abstracts", params=GEO, dtype=dtype, store=store))


@pytest.fixture(scope="module")
def reference(store):
    return _runs("float32", store)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_equals_float32_within_tolerance(dtype, reference, store):
    model = load_model("smollm2-135m", dtype=dtype)
    assert model.dtype == dtype and model.fingerprint.endswith(f":{dtype}")
    assert model.load_report["kv_cache_ok"] and model.load_report["tolerance"] == LOAD_CHECK_TOLERANCE[dtype]
    assert model.load_report["logprob_max_abs_diff"] <= LOAD_CHECK_TOLERANCE[dtype]
    ls, lens, geo = _runs(dtype, store)
    tol = TOL[dtype]
    assert ls.manifest["model"]["dtype"] == dtype and ls.manifest["model"]["device"] == "cpu"
    for col in ("mean_norm", "cos_prev", "top_pc_variance"):
        a, b = ls.table[col].to_numpy(), reference[0].table[col].to_numpy()
        ok = ~np.isnan(b)
        rel = np.abs(a[ok] - b[ok]) / np.abs(b[ok])
        assert rel.max() <= tol["rel"], (dtype, col, rel.max())
    kl_diff = np.abs(lens.table["kl"].to_numpy() - reference[1].table["kl"].to_numpy())
    assert kl_diff.mean() <= tol["kl"], (dtype, kl_diff.mean())
    assert (lens.table["top1"].to_numpy() == reference[1].table["top1"].to_numpy()).mean() >= tol["top1"]
    g = geo.table.set_index(["layer", "estimator"])["value"]
    g0 = reference[2].table.set_index(["layer", "estimator"])["value"]
    rel = ((g - g0).abs() / g0.abs()).groupby(level=1).max()
    assert (rel <= tol["geo"]).all(), (dtype, rel.to_dict())
