"""Tokenizer training and tiny-neox pretraining (seconds-long versions of the default run)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_models import no_network, tiny_corpus  # noqa: F401  (fixtures)

from jsae.data import pretrain as pretrain_mod
from jsae.data.hooks import mlp_module
from jsae.data.models import load_model
from jsae.data.pretrain import (
    PretrainConfig,
    TimeCapError,
    pretrain,
    save_tokenizer,
    time_cap_message,
    train_tokenizer,
)
from jsae.nn.mlp import mlp_from_module

TINY = dict(hidden=32, layers=2, heads=2, vocab_size=300, context_length=32, batch_size=8, lr=1e-2, warmup_steps=5,
            eval_every_s=1e9, eval_contexts=8, device="cpu")


def test_tokenizer_is_lossless_byte_level_bpe(tiny_corpus, tmp_path):  # noqa: F811
    tok = train_tokenizer(tiny_corpus, vocab_size=300)
    assert len(tok) == 300
    text = "And God said, Let there be light — ünïcödé 😀\n\ttabs"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # every byte is representable
    assert len(ids) < len(text.encode())  # merges were learned
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    save_tokenizer(tiny_corpus, tmp_path / "tok", vocab_size=300)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok"))(text, add_special_tokens=False)["input_ids"] == ids


def test_pretrain_learns_and_saves_a_loadable_pythia_architecture(tiny_corpus, tmp_path, no_network):  # noqa: F811
    out = tmp_path / "tiny-neox"
    result = pretrain(tiny_corpus, out, PretrainConfig(**TINY, max_steps=40, minutes=5, seed=0))
    saved = json.loads((out / "pretrain.json").read_text())
    assert saved["steps"] == 40 and saved["stopped_by"] == "max_steps" and saved["curve"][-1]["step"] == 40
    assert saved["final_validation_loss"] == pytest.approx(result["final_validation_loss"])
    # learned: far below the uniform guess ln(300) = 5.70 and below the unigram baseline
    assert result["final_validation_loss"] < result["unigram_baseline_loss"] < 5.70
    model, tok = load_model(str(out))
    cfg = model.config
    assert type(model).__name__ == "GPTNeoXForCausalLM" and cfg.use_parallel_residual and cfg.hidden_act == "gelu"
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.25 and not cfg.tie_word_embeddings
    assert cfg.intermediate_size == 4 * cfg.hidden_size and cfg.max_position_embeddings == 32
    assert mlp_from_module(mlp_module(model, 1)).kind == "plain"
    # deterministic for a seed and a step count
    again = pretrain(tiny_corpus, tmp_path / "again", PretrainConfig(**TINY, max_steps=40, minutes=5, seed=0))
    assert again["final_validation_loss"] == result["final_validation_loss"]


def test_time_budget_stops_training(tiny_corpus, tmp_path):  # noqa: F811
    result = pretrain(tiny_corpus, tmp_path / "m", PretrainConfig(**TINY, minutes=0.02, seed=1))
    assert result["stopped_by"] == "time_budget" and result["train_seconds"] < 10


def test_time_cap_on_a_step_budget_fails_and_writes_nothing(tiny_corpus, tmp_path):  # noqa: F811
    with pytest.raises(TimeCapError) as err:
        pretrain(tiny_corpus, tmp_path / "m", PretrainConfig(**TINY, max_steps=10**6, minutes=0.02, seed=1))
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, ValueError)  # the CLI prints it as one line
    assert re.search(r"the 0\.02-minute time cap stopped pretraining at step \d+ of max_steps=1000000", msg), msg
    assert re.search(r"raise pretrain\.minutes \(--minutes\) to at least \d+", msg) and "allow_time_cap: true" in msg
    assert not (tmp_path / "m").exists()  # no pretrain.json: the workflow's rule fails


def test_time_cap_fails_the_command_with_one_line(tiny_corpus, tmp_path, capsys):  # noqa: F811
    from jsae.__main__ import main

    threads = torch.get_num_threads()
    argv = ["pretrain", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "m"), "--hidden", "32", "--layers", "1",
            "--heads", "2", "--vocab-size", "300", "--context-length", "16", "--max-steps", "1000000",
            "--minutes", "0.01", "--device", "cpu"]
    assert main(argv) == 2  # what fails the workflow's pretrain rule
    torch.set_num_threads(threads)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("jsae pretrain: error:")]
    assert len(err) == 1 and "of max_steps=1000000" in err[0] and "raise pretrain.minutes" in err[0]
    assert not (tmp_path / "m").exists()


def test_an_allowed_time_cap_is_recorded(tiny_corpus, tmp_path, caplog):  # noqa: F811
    from jsae.report.results import load_pretrain

    cfg = PretrainConfig(**TINY, max_steps=10**6, minutes=0.02, seed=1, allow_time_cap=True)
    with caplog.at_level("WARNING", logger="jsae.data.pretrain"):
        result = pretrain(tiny_corpus, tmp_path / "m", cfg)
    saved = json.loads((tmp_path / "m" / "pretrain.json").read_text())
    assert saved["stopped_by"] == "time_budget" and saved["time_cap_fired"] is True
    assert saved["config"]["allow_time_cap"] is True and saved["config"]["max_steps"] == 10**6
    assert 0 < result["steps"] < 10**6
    assert any("allowed by allow_time_cap" in r.getMessage() for r in caplog.records)
    record = load_pretrain(tmp_path / "m" / "pretrain.json")  # what the summary reads
    assert record.stopped_early and record.model == "m" and record.steps == result["steps"]


def test_time_cap_message_names_the_budget_to_raise():
    cfg = PretrainConfig(minutes=8, max_steps=2000)
    # 829 steps in 8 minutes -> 2000 steps need 19.3 min at that pace; x1.5 margin -> 29 min
    msg = time_cap_message(cfg, 829, 480.0)
    assert msg.startswith("the 8-minute time cap stopped pretraining at step 829 of max_steps=2000")
    assert "to at least 29 for this machine's pace" in msg
    assert "raise pretrain.minutes (--minutes)," in time_cap_message(cfg, 0, 480.0)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"hidden": 30}, "hidden=30 with heads=2"),
        ({"minutes": 0}, "minutes=0"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"context_length": 1}, "context_length=1"),
        ({"vocab_size": 100}, "vocab_size=100"),
        ({"context_length": 100000}, "contexts of length 100000"),
    ],
)
def test_bad_configs(change, match, tiny_corpus, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=match):
        pretrain(tiny_corpus, tmp_path / "m", PretrainConfig(**{**TINY, "max_steps": 1, **change}))
    assert not (tmp_path / "m").exists()


def test_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrain(tmp_path / "none", tmp_path / "m", PretrainConfig(**TINY, max_steps=1))


def test_cli(tiny_corpus, tmp_path):  # noqa: F811
    threads = torch.get_num_threads()
    argv = [
        "--corpus",
        str(tiny_corpus),
        "--out",
        str(tmp_path / "m"),
        "--hidden",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--vocab-size",
        "300",
        "--context-length",
        "16",
        "--max-steps",
        "3",
        "--allow-time-cap",
        "--device",
        "cpu",
    ]
    assert pretrain_mod.cli(argv) == 0
    torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "m" / "pretrain.json").read_text())
    assert saved["steps"] == 3 and saved["config"]["allow_time_cap"] is True and saved["time_cap_fired"] is False
    assert (
        pretrain_mod.cli_tokenizer(["--corpus", str(tiny_corpus), "--out", str(tmp_path / "t"), "--vocab-size", "300"])
        == 0
    )
    assert (tmp_path / "t" / "tokenizer.json").is_file()


def test_set_threads(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert pretrain_mod.set_threads(None) == 1 == torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert pretrain_mod.set_threads(None) == 1
    with pytest.raises(ValueError, match="threads=0"):
        pretrain_mod.set_threads(0)
    torch.set_num_threads(threads)
