"""Bring your own model and dataset (config/byo-model.yaml): a hub id's revision on every command line that loads the
model, a local checkpoint's files as inputs of the rules that load it, config errors in one line, and the study
run end to end by the real snakemake on a tiny local checkpoint and a local parquet dataset."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import yaml
from test_models import save_tiny_model, tiny_corpus, tiny_tokenizer  # noqa: F401  (fixtures)
from test_workflow import REPO, job_counts, layout, snakemake

from jsae.data.corpus import read_documents

BYO = REPO / "config" / "byo-model.yaml"
#: What loads a model: these commands' --model values carry its spec (and revision).
LOADING = ("cache", "reinit", "train", "evaluate", "probes", "tables")


def byo() -> dict:
    return yaml.safe_load(BYO.read_text())


def write_config(tmp_path, cfg: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):  # noqa: F811
    """A tiny random Gemma 3 saved with save_pretrained: what a user's local checkpoint folder looks like."""
    return save_tiny_model("gemma3", tiny_tokenizer, tmp_path_factory.mktemp("byo") / "my-model")


@pytest.fixture(scope="module")
def parquet_data(tmp_path_factory, tiny_corpus):  # noqa: F811
    """The Bible chapters of the tiny corpus as a local parquet dataset (text in `content`, plus an id column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = read_documents(tiny_corpus, "train") + read_documents(tiny_corpus, "validation")
    folder = tmp_path_factory.mktemp("data")
    half = len(docs) // 2
    for i, part in enumerate((docs[:half], docs[half:])):
        pq.write_table(pa.table({"id": list(range(len(part))), "content": part}), folder / f"part-{i}.parquet")
    return folder


def tiny_study(checkpoint, parquet_data) -> dict:
    """config/byo-model.yaml pointed at the tiny checkpoint and dataset, at toy sizes (one pair per lambda)."""
    cfg = byo()
    cfg["device"] = "cpu"
    cfg["mlflow"] = {"enabled": False}
    cfg["corpora"]["mine"] = {"source": "parquet", "glob": [str(parquet_data / "*.parquet")], "text_column": "content",
                              "validation_fraction": 0.25}
    cfg["models"] = [{"name": "my-model", "source": "pretrained", "spec": str(checkpoint), "layers": [1],
                      "n_layers": 3}]
    cfg["cache"] = {"context_length": 24, "train_tokens": 2048, "eval_tokens": 512, "batch_size": 16}
    cfg["sae"] = {"k": 4, "expansion": 2}
    cfg["train"] = {"n_tokens": 2048, "batch_size": 256, "lr": 0.003, "checkpoint_every": 100, "log_every": 4,
                    "normalize_activations": "expected_norm"}
    cfg["lambdas"] = [0, 1]
    cfg["reinit"] = {"enabled": False}
    cfg["seeds"] = {"n": 1}
    cfg["evaluate"] = {"n_tokens": 512, "ce_tokens": 230}
    cfg["probes"] = {"enabled": False}
    cfg["tables"] = {"enabled": False}
    cfg["figures"] = {"names": ["fig4"], "jsae_lam": 1}
    return cfg


def commands(stdout: str, name: str) -> list[str]:
    return [line for line in stdout.splitlines() if f"python -m jsae {name} " in line]


def jobs(stdout: str) -> dict[str, int]:
    """job_counts with the per-model cache rules (cache_<variant>) counted as one kind, `cache`."""
    out: dict[str, int] = {}
    for rule, n in job_counts(stdout).items():
        kind = "cache" if rule.startswith("cache_") else rule
        out[kind] = out.get(kind, 0) + n
    return out


# --------------------------------------------------------------------------------------------------
# The example config, and a hub id's revision on the command lines
# --------------------------------------------------------------------------------------------------


def test_revision_reaches_every_command_that_loads_the_model(tmp_path):
    """config/byo-model.yaml on a hub id at a revision: cache, reinit, train, evaluate, probes and tables get
    `--model ID@REVISION` (jsae.data.models.split_revision), the control's commands its own folder. The corpora
    from a save_to_disk folder and a folder of .txt files reach `jsae corpus` with their keys."""
    import datasets

    cfg = byo()
    cfg["models"][0].update(spec="EleutherAI/pythia-70m-deduped", revision="step3000", n_layers=6)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": ["a b", "c d"]})}).save_to_disk(
        str(tmp_path / "saved data"))
    (tmp_path / "texts").mkdir()
    cfg["corpora"] = {"saved": {"source": "disk", "path": str(tmp_path / "saved data"), "split": "train",
                                "text_column": "content"},
                      "texts": {"source": "files", "glob": [str(tmp_path / "texts")]}}
    cfg.update(train_corpus="saved", eval_corpus="texts")
    res = snakemake("-n", "-p", "--configfile", str(write_config(tmp_path, cfg)), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    corpus = sorted(commands(res.stdout, "corpus"))
    assert len(corpus) == 2
    assert f"--source disk --validation-fraction 0.05 --path '{tmp_path / 'saved data'}' --text-column content " \
           "--split train --out results/corpus/saved" in corpus[0], corpus[0]
    assert f"--source files --validation-fraction 0.05 --glob '{tmp_path / 'texts'}' --out results/corpus/texts" \
           in corpus[1], corpus[1]
    counts = jobs(res.stdout)
    assert all(counts.get(name, 0) > 0 for name in LOADING), counts
    for name in LOADING:
        lines = commands(res.stdout, name)
        assert len(lines) == counts[name], (name, len(lines), counts[name])
        models = {re.search(r"--model (\S+)", line)[1] for line in lines}
        # the re-init control's pairs load the re-initialised copy (a local folder: no revision)
        expected = {"EleutherAI/pythia-70m-deduped@step3000", "results/models/my-model-reinit"}
        if name == "reinit":
            expected = {"EleutherAI/pythia-70m-deduped@step3000"}
        assert models == expected, (name, models)
    # without the key: no revision anywhere
    del cfg["models"][0]["revision"]
    res = snakemake("-n", "-p", "--configfile", str(write_config(tmp_path, cfg)), cwd=tmp_path)
    assert res.returncode == 0 and "@" not in "".join(commands(res.stdout, "cache")), res.stderr[-3000:]


@pytest.mark.parametrize("model, message", [
    ({"spec": "LOCAL", "revision": "main"},
     "config error: model 'my-model': revision='main' is only for a Hugging Face hub id, but model 'LOCAL' is a local "
     "model"),
    ({"source": "pretrain", "revision": "main"},
     "config error: model 'my-model': `revision` is only for source 'pretrained'"),
    ({"spec": "EleutherAI/pythia-70m-deduped", "revision": "a;rm"}, "does not match"),
])
def test_a_revision_where_none_applies_is_one_line(tmp_path, model, message, checkpoint):
    cfg = byo()
    model = {k: str(checkpoint) if v == "LOCAL" else v for k, v in model.items()}
    cfg["models"][0].update(model)
    if cfg["models"][0]["source"] == "pretrain":
        del cfg["models"][0]["spec"]
    res = snakemake("-n", "--configfile", str(write_config(tmp_path, cfg)), cwd=tmp_path)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("config error") and message.replace("LOCAL", str(checkpoint)) in last, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------------------------------
# A local checkpoint's files are inputs of the rules that load it
# --------------------------------------------------------------------------------------------------


def _set_mtime(paths, when: float) -> None:
    for path in paths:
        os.utime(path, (when, when))


def test_swapping_the_checkpoint_reruns_the_cache_and_the_reinit(tmp_path, tiny_tokenizer, parquet_data):  # noqa: F811
    """Plan the cache and the re-init control of a local checkpoint; fake them complete (outputs newer than every
    input): nothing to do; a newer weights file (a swapped checkpoint) plans both again, and nothing else."""
    ckpt = save_tiny_model("llama", tiny_tokenizer, tmp_path / "ckpt")
    cfg = tiny_study(ckpt, parquet_data)
    cfg["reinit"] = {"enabled": True, "lambdas": [0, 1], "seed": 1}
    config = write_config(tmp_path, cfg)
    paths = layout()
    cache = paths["cache_path"]("my-model", 1, "train")
    reinit_dir = tmp_path / paths["model_dir"]("my-model-reinit")
    targets = [cache, str(reinit_dir.relative_to(tmp_path) / "reinit.json")]

    def plan() -> dict[str, int]:
        res = snakemake(*targets, "-n", "--configfile", str(config), cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
        return jobs(res.stdout)

    assert plan() == {"corpus": 1, "cache": 1, "reinit": 1}
    # the jobs' outputs, as if they had run after the checkpoint and the data were written
    corpus = tmp_path / paths["corpus_dir"]("mine")
    outputs = [corpus / name for name in ("corpus.json", "train.jsonl", "validation.jsonl")]
    outputs += [tmp_path / cache] + [reinit_dir / name for name in ("reinit.json", "config.json", "model.safetensors")]
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    now = time.time()
    _set_mtime([p for p in ckpt.iterdir()] + list(parquet_data.iterdir()), now - 200)
    _set_mtime(outputs, now - 100)
    assert plan() == {}
    _set_mtime([ckpt / "model.safetensors"], now)  # the checkpoint's weights replaced
    assert plan() == {"cache": 1, "reinit": 1}
    _set_mtime([ckpt / "model.safetensors"], now - 200)
    _set_mtime([parquet_data / "part-0.parquet"], now)  # the dataset edited: the corpus, then what reads it
    assert plan() == {"corpus": 1, "cache": 1}


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


def test_byo_study_end_to_end(tmp_path, checkpoint, parquet_data):
    """The real snakemake on config/byo-model.yaml pointed at a tiny local Gemma 3 and a local parquet dataset."""
    cfg = tiny_study(checkpoint, parquet_data)
    config = write_config(tmp_path, cfg)
    run = snakemake("--configfile", str(config), "--cores", "2", cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-6000:]
    for lam in cfg["lambdas"]:
        path = tmp_path / layout()["eval_dir"]("my-model", 1, "trained", lam, 0) / "evaluation.json"
        metrics = json.loads(path.read_text())["metrics"]
        assert metrics["eval/n_tokens"] == cfg["evaluate"]["n_tokens"] and metrics["jac/l1"] > 0, lam
        # SAEBench's core-eval JSON of both SAEs (the core rule is on unless a config turns it off)
        for sae in ("sae_in", "sae_out"):
            core = json.loads((path.parent / "core" / f"{sae}_eval_results.json").read_text())
            assert core["eval_type_id"] == "core" and core["eval_result_metrics"]["sparsity"]["l0"] == 4, core
            assert core["eval_result_metrics"]["model_performance_preservation"]["ce_loss_without_sae"] > 0
    corpus = json.loads((tmp_path / layout()["corpus_dir"]("mine") / "corpus.json").read_text())
    assert corpus["source"] == "parquet" and corpus["details"]["text_column"] == "content"
    assert (tmp_path / "results" / "figures" / "fig4.png").is_file()
    assert "| site | claim |" in (tmp_path / "results" / "summary.md").read_text()
    again = snakemake("-n", "--configfile", str(config), cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
