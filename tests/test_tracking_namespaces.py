"""One meaning per MLflow key: a real tiny training, evaluation, probes and tables into a real sqlite
store, read back with MlflowClient the way the runs table reads it (latest values).

Oracles: the files the pipeline writes (run.json, evaluation.json, probes.json) and, for the
headline ``eval/ce/score_mean``, the mean of the two CE scores computed here by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

N_STEPS, LOG_EVERY = 10, 5
pytestmark = pytest.mark.slow  # a sqlite store's migrations, a training and three evaluation commands


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A tiny saved GPT-NeoX, its caches, a pair trained with tracking, and its evaluation, probes and tables."""
    from builders import build_tiny_saved_lm

    from jsae.data.cache import build_cache
    from jsae.eval.evaluate import cli as evaluate_cli
    from jsae.eval.probes import cli as probes_cli
    from jsae.eval.tables import cli as tables_cli
    from jsae.tracking import init_tracking_store
    from jsae.train.run import TrainConfig, train_from_files

    root = tmp_path_factory.mktemp("namespaces")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    init_tracking_store(uri)
    build_tiny_saved_lm(root, validation_fraction=0.3)
    for split, n in (("train", 450), ("validation", 300)):
        build_cache(str(root / "model"), 1, root / "corpus", split, n, 16, root / f"{split}.h5", device="cpu",
                    progress=False, batch_size=8)
    run = train_from_files(
        str(root / "model"), 1, root / "train.h5", root / "run",
        TrainConfig(lam=1.0, n_tokens=32 * N_STEPS, batch_size=32, k=4, expansion=4, lr=3e-3),
        progress=False, device="cpu", log_every=LOG_EVERY, checkpoint_every=100, mlflow_uri=uri, experiment="ns",
    )
    common = ["--model", str(root / "model"), "--layer", "1", "--run", str(root / "run"), "--cache",
              str(root / "validation.h5"), "--device", "cpu", "--no-progress", "--mlflow-uri", uri]
    out = root / "eval"
    ev_args = ["--out", str(out / "evaluation.json"), "--ce-tokens", "60", "--batch-size", "64"]
    assert evaluate_cli([*common, *ev_args]) == 0
    assert probes_cli([*common, "--out", str(out / "probes.json"), "--n-samples", "200", "--seed", "1"]) == 0
    assert tables_cli([*common, "--out", str(out / "tables.html"), "--n-output-latents", "2", "--min-active", "1"]) == 0
    return {"uri": uri, "run": run, "run_dir": root / "run",
            "evaluation": json.loads((out / "evaluation.json").read_text())["metrics"],
            "probes": json.loads((out / "probes.json").read_text())["metrics"]}


def _numbers(metrics: dict) -> dict[str, float]:
    """The finite scalars of a JSON metrics object (MLflow drops None, NaN and inf)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _runs_table(uri: str, run_id: str) -> dict[str, float]:
    """The latest metrics of the run as the runs table gets them (search_runs)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    [row] = [r for r in client.search_runs([client.get_run(run_id).info.experiment_id]) if r.info.run_id == run_id]
    return row.data.metrics


def test_runs_table_shows_evaluation_and_training_each_under_its_own_keys(study) -> None:
    from mlflow.tracking import MlflowClient

    run, uri = study["run"], study["uri"]
    run_id = run["mlflow_run_id"]
    assert run_id and run["n_steps"] == N_STEPS
    latest = _runs_table(uri, run_id)
    evaluation, probes, train = _numbers(study["evaluation"]), _numbers(study["probes"]), _numbers(run["metrics"])
    assert train and evaluation and probes

    # Training: exactly run.json's final metrics, every one under train/.
    logged_train = {k: v for k, v in latest.items() if k.startswith("train/")}
    assert set(train) == set(logged_train)
    assert logged_train == pytest.approx(train, rel=1e-12, abs=0)

    # Evaluation and probes: the files' values under eval/ (eval/n_tokens is not prefixed twice).
    expected = {("" if k.startswith("eval/") else "eval/") + k: v for d in (evaluation, probes) for k, v in d.items()}
    assert len(expected) == len(evaluation) + len(probes)  # evaluation and probes share no key
    ce = [evaluation[k] for k in ("in/ce_loss_score", "out/ce_loss_score") if k in evaluation]
    if len(ce) == 2:  # fig. 5's y-axis, by hand (a refused score leaves no mean to log)
        expected["eval/ce/score_mean"] = (ce[0] + ce[1]) / 2
    logged_eval = {k: v for k, v in latest.items() if k.startswith("eval/")}
    assert set(logged_eval) == set(expected)
    assert logged_eval == pytest.approx(expected, rel=1e-12, abs=0)
    assert set(latest) == set(logged_train) | set(logged_eval)  # nothing outside the two namespaces

    # The keys that collided before, spelled out: both values are visible, each under its own name.
    for name in ("out/dead_fraction", "in/dead_fraction", "in/mse", "out/mse", "jac/l1", "jac/frac_above_0.01"):
        assert latest[f"train/{name}"] == pytest.approx(run["metrics"][f"train/{name}"], rel=1e-12)
        assert latest[f"eval/{name}"] == pytest.approx(study["evaluation"][name], rel=1e-12)
    assert latest["eval/probe/linear_frac"] == pytest.approx(study["probes"]["probe/linear_frac"], rel=1e-12)

    # No key is logged by both: each eval/ key once, at the final training step; train/ keys only at
    # training's log steps (and its final summary, also at N_STEPS).
    client = MlflowClient(tracking_uri=uri)
    for key in logged_eval:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [N_STEPS], key
    for key in logged_train:
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [LOG_EVERY, N_STEPS, N_STEPS], key


def test_uploading_a_run_directory_after_the_fact_gives_the_same_training_keys(study, tmp_path: Path) -> None:
    """``python -m jsae.tracking URI --upload RUN_DIR`` logs what training logs; a run directory written
    before the train/ namespace (bare keys) is uploaded under the same names."""
    import shutil

    from jsae.export import read_run
    from jsae.tracking import main

    run, uri = study["run"], study["uri"]
    fresh = tmp_path / "fresh"
    shutil.copytree(study["run_dir"], fresh)
    assert main([uri, "--upload", str(fresh), "--experiment", "ns-upload"]) == 0
    uploaded = read_run(fresh)["mlflow_run_id"]
    assert uploaded != run["mlflow_run_id"]
    assert _runs_table(uri, uploaded) == pytest.approx(_numbers(run["metrics"]), rel=1e-12)

    # A legacy run directory: the same numbers under the old bare keys.
    legacy = tmp_path / "legacy"
    shutil.copytree(study["run_dir"], legacy)
    strip = lambda d: {(k[len("train/"):] if k.startswith("train/") else k): v for k, v in d.items()}  # noqa: E731
    rows = [json.loads(line) for line in (legacy / "metrics.jsonl").read_text().splitlines()]
    (legacy / "metrics.jsonl").write_text("".join(json.dumps(strip(r)) + "\n" for r in rows))
    record = json.loads((legacy / "run.json").read_text())
    record["metrics"] = strip(record["metrics"])
    (legacy / "run.json").write_text(json.dumps(record))
    assert "loss" in record["metrics"] and "train/loss" not in record["metrics"]
    assert main([uri, "--upload", str(legacy), "--experiment", "ns-upload"]) == 0
    assert _runs_table(uri, read_run(legacy)["mlflow_run_id"]) == pytest.approx(_numbers(run["metrics"]), rel=1e-12)


def test_headline_ce_score_mean_is_on_the_pairs_run(study) -> None:
    """The tiny LM's CE scores are refused (ablation barely hurts), so the headline is checked on
    hand-set scores: logged by the evaluation's call, at the given step, beside the prefixed scores."""
    from jsae.tracking import Tracker, log_to_pair_run

    tracker = Tracker(study["uri"], "ns-headline")
    run_id = tracker.start("tiny/L1/trained/lam1", params={}, tags={})
    tracker.log_metrics({"train/loss": 2.0}, step=7)
    tracker.finish()
    evaluation = {"in/ce_loss_score": 0.625, "out/ce_loss_score": 0.875, "jac/frac_above_0.01": 0.125, "note": "x"}
    assert log_to_pair_run(study["uri"], run_id, evaluation, step=7)
    assert _runs_table(study["uri"], run_id) == {"train/loss": 2.0, "eval/in/ce_loss_score": 0.625,
                                                 "eval/out/ce_loss_score": 0.875, "eval/jac/frac_above_0.01": 0.125,
                                                 "eval/ce/score_mean": 0.75}


def test_pair_logging_refuses_a_bad_step_and_warns_without_one() -> None:
    from jsae.tracking import log_to_pair_run

    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=r"step=.* is invalid; expected the pair's final training step"):
            log_to_pair_run("sqlite:///never.db", "run", {"a": 1.0}, step=bad)
    with pytest.warns(UserWarning, match="n_steps"):
        assert not log_to_pair_run("sqlite:///never.db", "run", {"a": 1.0}, step=None)
    assert not log_to_pair_run(None, "run", {"a": 1.0}, step=None)  # tracking off: silent


def test_headline_is_the_reports_mean_ce_score() -> None:
    """``pair_headlines``: a hand-computed mean, and the report's own rule where a score is refused or absent."""
    from jsae.report.results import PairResult, ce_score_mean
    from jsae.tracking import eval_key, pair_headlines

    assert pair_headlines({"in/ce_loss_score": 0.5, "out/ce_loss_score": 0.9}) == {"ce/score_mean": pytest.approx(0.7)}
    assert pair_headlines({"in/ce_loss_score": -0.25, "out/ce_loss_score": 1.0}) == {"ce/score_mean": 0.375}
    for partial in ({"out/ce_loss_score": 0.25}, {"in/ce_loss_score": float("nan"), "out/ce_loss_score": 0.4}):
        [value] = pair_headlines(partial).values()  # one definition: whatever the report's figure 5 plots
        report = ce_score_mean(PairResult("m", 1, "trained", 1.0, metrics=partial))
        assert value == report or (math.isnan(value) and math.isnan(report))
    assert pair_headlines({"probe/linear_frac": 0.1, "in/explained_variance": 0.9}) == {}
    assert eval_key("in/mse") == "eval/in/mse" and eval_key("eval/n_tokens") == "eval/n_tokens"
