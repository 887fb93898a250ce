"""Datasets and vectors: formats and every kind of bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from workbench.data import load_dataset, load_vectors, TextDataset
from workbench.errors import WorkbenchError


def test_builtin_abstracts():
    ds = load_dataset("abstracts")
    assert len(ds) == 400 and ds.text_column == "abstract"
    assert ds.content_hash == load_dataset("abstracts").content_hash
    assert ds.subset(10).texts == ds.texts[:10]


def test_txt_csv_jsonl_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("one text\n\nsecond text\n")
    assert load_dataset(tmp_path / "a.txt").texts == ["one text", "second text"]
    pd.DataFrame({"sentence": ["x y", "z"], "topic": ["a", "b"], "other": [1, 2]}).to_csv(tmp_path / "b.csv", index=False)
    ds = load_dataset(tmp_path / "b.csv")
    assert ds.texts == ["x y", "z"] and ds.labels == ["a", "b"] and "other" in ds.frame
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in ["p", "q"]))
    assert load_dataset(tmp_path / "c.jsonl", text_column="body").texts == ["p", "q"]
    pd.DataFrame({"text": ["r"]}).to_parquet(tmp_path / "d.parquet")
    assert load_dataset(tmp_path / "d.parquet").texts == ["r"]


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "No dataset"),
    (lambda p: p.write_text(""), "empty"),
    (lambda p: p.write_bytes(b"caf\xe9 latin-1\n"), "not UTF-8"),
])
def test_bad_text_files(tmp_path, setup, match):
    path = tmp_path / "x.txt"
    setup(path)
    with pytest.raises(WorkbenchError, match=match):
        load_dataset(path)


def test_missing_column_names_the_columns(tmp_path):
    pd.DataFrame({"a": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(WorkbenchError, match=r"no text column.*\['a'\]"):
        load_dataset(tmp_path / "t.csv")
    with pytest.raises(WorkbenchError, match="no column 'body'"):
        load_dataset(tmp_path / "t.csv", text_column="body")


def test_vectors_formats_and_errors(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    np.testing.assert_array_equal(load_vectors(tmp_path / "v.npy"), x)
    pd.DataFrame(x, columns=["a", "b", "c"]).assign(name=list("vwxyz")).to_parquet(tmp_path / "v.parquet")
    np.testing.assert_allclose(load_vectors(tmp_path / "v.parquet"), x)
    pd.DataFrame({"id": range(5), "emb": list(x)}).to_parquet(tmp_path / "w.parquet")
    np.testing.assert_allclose(load_vectors(tmp_path / "w.parquet", column="emb"), x)
    bad = x.copy()
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(WorkbenchError, match="NaN"):
        load_vectors(tmp_path / "nan.npy")
    np.save(tmp_path / "one_d.npy", x[0])
    with pytest.raises(WorkbenchError, match="2-D"):
        load_vectors(tmp_path / "one_d.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WorkbenchError, match="object arrays are refused"):
        load_vectors(tmp_path / "obj.npy")


def test_from_texts_validates():
    with pytest.raises(WorkbenchError, match="empty"):
        TextDataset.from_texts([])
    with pytest.raises(WorkbenchError, match="one label per text"):
        TextDataset.from_texts(["a", "b"], labels=["x"])


def test_stratified_keeps_every_label_in_its_share():
    from workbench.data import TextDataset, load_dataset

    topics = load_dataset("topics")  # sorted by label: its first 400 texts hold a few labels only
    assert len(set(topics.subset(400).labels)) < len(set(topics.labels))
    sample = topics.stratified(400)
    counts, full = pd.Series(sample.labels).value_counts(), pd.Series(topics.labels).value_counts()
    assert len(sample) == 400 and set(counts.index) == set(full.index)
    assert (abs(counts - full * 400 / len(topics)) < 1).all()  # largest remainder: within one of the share
    order = [topics.texts.index(t) for t in sample.texts]
    assert order == sorted(order)  # file order kept
    assert topics.stratified(10**6) is topics
    small = TextDataset.from_texts(["a", "b", "c", "d", "e"], labels=["x", "x", "x", "y", "y"]).stratified(3)
    assert small.texts == ["a", "b", "d"]
    with pytest.raises(WorkbenchError, match="no labels"):
        TextDataset.from_texts(["a", "b"]).stratified(1)
