"""The metric keys training logs (``metrics.jsonl``, MLflow, run.json's ``metrics``), named once.

Every ``log_every`` steps (MLflow step = optimiser step): the loss parts averaged over the steps
since the last log (:data:`WINDOW_MEANS`); ``jac/l1`` and ``jac/frac_above_0.01`` on the logged
step's batch (computed for lam = 0 too); lam and the learning rate at the window's last step;
throughput; dead-latent fractions and counts. ``step`` and ``tokens`` are in ``metrics.jsonl`` only.
"""

from __future__ import annotations

from jsae.eval.metrics import threshold_key

#: |J| threshold of the logged Jacobian sparsity (the paper's headline threshold).
JAC_THRESHOLD = 0.01

STEP = "step"
TOKENS = "tokens"
LOSS = "loss"
IN_MSE = "in/mse"
OUT_MSE = "out/mse"
#: The loss's Jacobian term before lam (0 when lam is 0), averaged over the log window.
JAC_L1_TRAIN = "jac/l1_train"
#: Eq. 5's Jacobian term before lam (jsae.nn.pair.jacobian_l1) on the logged step's batch.
JAC_L1 = "jac/l1"
#: Share of the k_out x k_in active |J| above JAC_THRESHOLD on the logged step's batch.
JAC_FRAC = threshold_key(JAC_THRESHOLD)
#: lam at the window's last step (it warms up from 0).
LAM = "lam"
LR = "lr"
TOKENS_PER_S = "tokens_per_s"
READER_WAIT_FRACTION = "reader_wait_fraction"
IN_DEAD_FRACTION = "in/dead_fraction"
OUT_DEAD_FRACTION = "out/dead_fraction"
IN_DEAD_COUNT = "in/dead_count"
OUT_DEAD_COUNT = "out/dead_count"

#: Scalar fields of :class:`jsae.nn.pair.LossParts` averaged over each log window -> their keys.
WINDOW_MEANS = {"loss": LOSS, "mse_in": IN_MSE, "mse_out": OUT_MSE, "jac": JAC_L1_TRAIN}
