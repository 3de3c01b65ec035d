"""Fault injection, bad configs: each mistake a user can make in config.yaml is refused by the real
`snakemake -n` before anything runs, in one line naming the bad value and what is expected (no traceback,
no schema dump). Part of the fault-injection suite: `make faults`."""

from __future__ import annotations

import math
import time

import pytest
import yaml
from test_workflow import load, snakemake

pytestmark = pytest.mark.faults


def _set(path: str, value):
    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[last] = value
    return mutate


CASES = [
    ("misspelled top-level key", lambda c: c.update(lamdas=c.pop("lambdas")), "'lamdas' was unexpected"),
    ("misspelled train key", _set("train.learning_rate", 0.001), "'learning_rate' was unexpected"),
    ("lambda NaN", _set("lambdas", [0, math.nan, 1]), "lambdas value nan is invalid"),
    ("lambda inf", _set("lambdas", [0, 1, math.inf]), "lambdas value inf is invalid"),
    ("negative lambda", _set("lambdas", [0, -0.5, 1]), "-0.5 is less than the minimum of 0"),
    ("k above the latents", _set("sae.k", 5000), "k=5000 (input) / 5000 (output) exceeds the number of latents"),
    ("fewer tokens than one batch", _set("train.n_tokens", 100), "n_tokens=100 with batch_size=256 gives zero"),
    ("context above the model's", _set("cache.context_length", 512), "exceeds model 'tiny-neox''s context of 128"),
    ("hidden not divisible by heads", _set("models.0.pretrain.hidden", 136), "hidden=136 with heads=4 is invalid"),
    ("evaluation tokens above the cache", _set("evaluate.n_tokens", 90000), "evaluate.n_tokens=90000 exceeds"),
    ("CE tokens above the cache", _set("evaluate.ce_tokens", 50000), "evaluate.ce_tokens=50000 exceeds"),
    ("fig7 without the re-init control", _set("reinit.enabled", False), "fig7 (trained vs re-initialised model)"),
    ("replicated lambda not swept", _set("seeds.lambdas", [0, 2]), "seeds.lambdas value 2 is not in `lambdas`"),
    ("no seeds", _set("seeds.n", 0), "0 is less than the minimum of 1"),
    ("unknown corpus", _set("eval_corpus", "c4"), "eval_corpus='c4' is not a corpus in `corpora`"),
    ("layer out of range", _set("models.0.layers", [7]), "layer 7 is out of range; expected 0..3"),
    ("unknown key in a model's sae", _set("models.1.sae.kk", 3), "model 'planted-gelu': sae.kk is not a `sae:` key"),
    ("model lambdas without 0", _set("models.1.lambdas", [1, 3]), "model 'planted-gelu': lambdas [1, 3] lack 0"),
    ("model k above its latents", _set("models.1.sae.k", 500), "model 'planted-gelu' (width 32): k=500"),
    ("model train below one batch", _set("models.1.train.n_tokens", 10), "model 'planted-gelu' sae/train: n_tokens=10"),
]


@pytest.mark.parametrize("mutate, message", [pytest.param(m, msg, id=name) for name, m, msg in CASES])
def test_bad_config_is_refused_in_one_line_before_anything_runs(tmp_path, mutate, message):
    cfg = load("config.yaml")
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    res = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert res.returncode != 0
    out = [line for line in (res.stdout + res.stderr).splitlines()
           if line.strip() and not line.startswith("Using workflow specific profile")]
    assert len(out) == 1 and out[0].startswith("config error: ") and message in out[0], out[:20]
    assert not (tmp_path / "results").exists()  # refused before anything ran
    assert time.monotonic() - start < 60
