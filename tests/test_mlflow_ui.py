"""The MLflow UI shows a study's λ sweep in its Compare view: `mlflow ui` on 127.0.0.1, driven in headless Chromium.

A fresh sqlite store is written by jsae's own code, as a study writes it: the study's parent run
(``init_tracking_store``), each pair a child run started by the :class:`~jsae.tracking.Tracker` with the params
and tags training logs (:class:`~jsae.train.run.RunRecord`), training's metrics under ``train/``, evaluation's
added by :func:`~jsae.tracking.log_to_pair_run` (``eval/…``, with the pair's headline ``eval/ce/score_mean``).
Beside the sweep (tiny-neox L2, trained, seed 0, λ = 0, 1, 3) sit runs it must not pick up: the re-init
control and another seed.

``benchmarks/mlflow_ui_screenshot.py`` (the script that makes the README's screenshot) drives the browser
over the DevTools protocol as a user clicks: "Model training", the experiment, expand the parent run, tick
the sweep's runs, "Compare", then the parallel-coordinates plot set to ``lambda`` against the Jacobian
sparsity and the CE score, and "Show diff only" on the parameters. The test asserts on what the page
rendered: the runs, the ``lambda`` row (the only parameter that differs), each run's evaluation values in
the metrics table (not training's value of the same quantity) and the plot's axes and ranges.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mlflow_ui_screenshot.py"
_spec = importlib.util.spec_from_file_location("mlflow_ui_screenshot", SCRIPT)
ui = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ui  # dataclasses look their module up by name
_spec.loader.exec_module(ui)

CHROMIUM = ui.find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)"
    ),
]

STUDY = "jsae-ui-study"
MODEL, LAYER, N_STEPS = "tiny-neox", 2, 40
#: The sweep: λ -> (Jacobian sparsity, input SAE's CE loss score, output SAE's), as evaluation.json has them.
SWEEP = {0.0: (0.75, 0.98, 0.96), 1.0: (0.5, 0.9, 0.86), 3.0: (0.25, 0.8, 0.7)}
#: Runs beside it: (control, λ, seed).
OTHERS = [("reinit", 0.0, 0), ("reinit", 1.0, 0), ("trained", 1.0, 1)]
TRAIN_JAC = 0.999  # training's own (one-batch) value of the same quantity, under train/: never shown as eval's


def _log_pair(uri: str, parent: str, control: str, lam: float, seed: int, values: tuple[float, float, float]) -> str:
    """One pair's child run, written as the train and evaluate rules write it; returns its id."""
    from jsae.eval.metrics import IN_CE_SCORE_KEY, JAC_FRAC_KEY, OUT_CE_SCORE_KEY
    from jsae.tracking import Tracker, log_to_pair_run, run_name
    from jsae.train.config import TrainConfig
    from jsae.train.run import RunRecord

    config = TrainConfig(lam=lam, seed=seed, n_tokens=N_STEPS * 256, batch_size=256, k=16, expansion=8)
    record = RunRecord(
        model=f"results/models/{MODEL}", model_name=MODEL, layer=LAYER, control=control, config=config,
        dims=config.dims(128, 128), mlp={"d_in": 128, "d_mlp": 512, "mlp_kind": "plain"}, hook=None,
        hook_name=f"gpt_neox.layers.{LAYER}.mlp", cache={"n_tokens": 4096}, activation_scales={"in": 1.0, "out": 1.0},
        device="cpu", autocast=None,
    )
    tracker = Tracker(uri, STUDY)
    run_id = tracker.start(run_name(MODEL, LAYER, lam, control, seed), params=record.params(),
                           tags=record.tags(STUDY), parent_run_id=parent)
    tracker.log_metrics({"train/loss": 0.125, f"train/{JAC_FRAC_KEY}": TRAIN_JAC}, step=N_STEPS)
    tracker.finish()
    assert tracker.status == "ok", tracker.status
    jac, ce_in, ce_out = values
    assert log_to_pair_run(uri, run_id, {JAC_FRAC_KEY: jac, IN_CE_SCORE_KEY: ce_in, OUT_CE_SCORE_KEY: ce_out},
                           step=N_STEPS)
    return run_id


@pytest.fixture
def study_store(tmp_path):
    from jsae.tracking import init_tracking_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = init_tracking_store(uri, STUDY)["parent_run_id"]
    assert parent
    sweep = {lam: _log_pair(uri, parent, "trained", lam, 0, values) for lam, values in SWEEP.items()}
    for control, lam, seed in OTHERS:
        _log_pair(uri, parent, control, lam, seed, (0.1, 0.5, 0.5))
    return uri, parent, sweep


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_compare_view_shows_the_lambda_sweep(tmp_path, study_store):
    uri, parent, sweep_ids = study_store
    from jsae.tracking import run_name

    sweep = ui.find_sweep(uri, STUDY)
    assert (sweep.parent_id, sweep.model, sweep.layer, sweep.control, sweep.seed) == (parent, MODEL, "2", "trained",
                                                                                      "0")
    assert sweep.run_ids == list(sweep_ids.values()) and sweep.lambdas == list(SWEEP)

    # Generous limits: on a loaded machine (a study running beside the tests) the server's start takes minutes.
    with ui.mlflow_ui(uri, tmp_path, timeout=900) as base, \
            ui.Chromium(CHROMIUM, tmp_path / "chromium", timeout=300) as page:
        view = ui.compare_sweep(page, base, sweep, screenshot=tmp_path / "compare.png",
                                on_failure=tmp_path / "failed.png")
    shown = view.page

    # Exactly the sweep's runs, one column each.
    assert sorted(view.run_ids) == sorted(sweep.run_ids), "the compare page shows other runs than the ticked ones"
    assert shown["title"] == f"Comparing {len(SWEEP)} Runs from 1 Experiment"
    lam_of = {rid: lam for lam, rid in sweep_ids.items()}
    columns = [lam_of[rid] for rid in view.run_ids]  # λ of each column, in the page's order
    assert shown["runs"]["Run Name:"] == [run_name(MODEL, LAYER, lam, "trained", 0) for lam in columns]

    # λ is one parameter, `lambda`, and the only one that differs along the sweep.
    assert list(shown["params"]) == [ui.LAMBDA_PARAM], f"parameters that differ: {list(shown['params'])}"
    assert [float(v) for v in shown["params"][ui.LAMBDA_PARAM]] == columns

    # Evaluation's values per run under eval/ keys (the CE score is the pair's headline mean of both SAEs').
    for key in (ui.JAC_METRIC, ui.CE_METRIC):
        assert key in shown["metrics"], f"{key} is not in the compare page's metrics: {sorted(shown['metrics'])}"
    want_jac = [SWEEP[lam][0] for lam in columns]
    want_ce = [0.5 * (SWEEP[lam][1] + SWEEP[lam][2]) for lam in columns]
    got_jac = [_number(v) for v in shown["metrics"][ui.JAC_METRIC]]
    got_ce = [_number(v) for v in shown["metrics"][ui.CE_METRIC]]
    assert all(math.isclose(g, w, abs_tol=1e-3) for g, w in zip(got_jac, want_jac, strict=True)), (got_jac, want_jac)
    assert all(math.isclose(g, w, abs_tol=1e-3) for g, w in zip(got_ce, want_ce, strict=True)), (got_ce, want_ce)
    assert TRAIN_JAC not in got_jac

    # The plot: λ against the Jacobian sparsity and the CE score, each axis spanning the sweep's values.
    assert [a["title"] for a in view.axes] == [ui.LAMBDA_PARAM, ui.JAC_METRIC, ui.CE_METRIC]
    for axis, values in zip(view.axes, (list(SWEEP), want_jac, want_ce), strict=True):
        assert math.isclose(_number(axis["bottom"]), min(values), abs_tol=1e-3), axis
        assert math.isclose(_number(axis["top"]), max(values), abs_tol=1e-3), axis

    png = (tmp_path / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
