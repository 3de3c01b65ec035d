"""The metric keys training logs (``metrics.jsonl``, MLflow, run.json's ``metrics``), named once.

Every training metric lives under ``train/`` (:data:`PREFIX`), so in the pair's MLflow run it can
never share a key with evaluation's ``eval/…`` metrics (:func:`jsae.tracking.eval_key`): the same
name once meant training's value at step N and evaluation's at step 0, and the runs table showed
whichever was logged at the later step.

Every ``log_every`` steps (MLflow step = optimiser step): the loss parts averaged over the steps
since the last log (:data:`WINDOW_MEANS`); ``train/jac/l1`` and ``train/jac/frac_above_0.01`` on
the logged step's batch (computed for lam = 0 too); lam and the learning rate at the window's last
step; throughput; dead-latent fractions and counts. ``step`` (the row's optimiser step) is in
``metrics.jsonl`` only; MLflow has it as the metric step.
"""

from __future__ import annotations

from jsae.eval.metrics import threshold_key

#: The namespace of every training metric.
PREFIX = "train/"


def train_key(name: str) -> str:
    """``train/{name}``; a key already under ``train/`` is returned as is (run directories written
    before the namespace existed are uploaded through this, see :func:`jsae.tracking.upload_run`)."""
    return name if name.startswith(PREFIX) else f"{PREFIX}{name}"


#: |J| threshold of the logged Jacobian sparsity (the paper's headline threshold).
JAC_THRESHOLD = 0.01

#: The row's optimiser step (metrics.jsonl only; not a metric).
STEP = "step"
#: Tokens trained on up to the row's step (steps x batch size).
TOKENS = train_key("tokens")
#: The training objective, eq. 5 (MSEs in the scaled training units), averaged over the log window.
LOSS = train_key("loss")
IN_MSE = train_key("in/mse")
OUT_MSE = train_key("out/mse")
#: The loss's Jacobian term before lam (0 when lam is 0), averaged over the log window.
JAC_L1_TRAIN = train_key("jac/l1_train")
#: Eq. 5's Jacobian term before lam (jsae.nn.pair.jacobian_l1) on the logged step's batch.
JAC_L1 = train_key("jac/l1")
#: Share of the k_out x k_in active |J| above JAC_THRESHOLD on the logged step's batch.
JAC_FRAC = train_key(threshold_key(JAC_THRESHOLD))
#: lam at the window's last step (it warms up from 0).
LAM = train_key("lam")
LR = train_key("lr")
TOKENS_PER_S = train_key("tokens_per_s")
READER_WAIT_FRACTION = train_key("reader_wait_fraction")
IN_DEAD_FRACTION = train_key("in/dead_fraction")
OUT_DEAD_FRACTION = train_key("out/dead_fraction")
IN_DEAD_COUNT = train_key("in/dead_count")
OUT_DEAD_COUNT = train_key("out/dead_count")
#: Each side's dead-latent keys (a trainer logs one tracker per side: the pair both, a transcoder ``out``).
DEAD_FRACTIONS = {"in": IN_DEAD_FRACTION, "out": OUT_DEAD_FRACTION}
DEAD_COUNTS = {"in": IN_DEAD_COUNT, "out": OUT_DEAD_COUNT}

#: AuxK's reconstruction of each SAE's error from its dead latents (MSE before the coefficient; 0 when off).
IN_AUXK_MSE = train_key("in/auxk_mse")
OUT_AUXK_MSE = train_key("out/auxk_mse")

#: Scalar fields of :class:`jsae.nn.pair.LossParts` averaged over each log window -> their keys.
WINDOW_MEANS = {
    "loss": LOSS, "mse_in": IN_MSE, "mse_out": OUT_MSE, "jac": JAC_L1_TRAIN,
    "auxk_in": IN_AUXK_MSE, "auxk_out": OUT_AUXK_MSE,
}
