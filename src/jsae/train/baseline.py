"""One baseline run: a TopK transcoder or skip transcoder (:mod:`jsae.nn.transcoder`) trained from the same activation
cache, with the same recipe, width, k, tokens and data order as the study's JSAE pairs, into its own run directory.

What is shared with a pair's training (:mod:`jsae.train.run`, :mod:`jsae.train.trainer`), and what is not:

* **The same settings.** One :class:`~jsae.train.config.TrainConfig` (the study's ``sae:`` and ``train:`` keys) with
  ``lam = 0``: the transcoder has the pair's *input* SAE's width and k (``n_latents``, ``k``: it reads x, as the
  input SAE does), the LR schedule (:func:`~jsae.train.schedules.lr_at`), Adam's settings, tokens, batch size,
  data order (the cache's batches for ``seed``), activation scales (``expected_norm``: the pair's own estimate,
  :func:`~jsae.train.run.estimate_activation_scales`), dtype, gradient clipping, AuxK and the dead-latent window.
* **The same machinery.** Batch sources and the :class:`~jsae.train.sources.Prefetcher`, the
  :class:`~jsae.train.dead.DeadLatentTracker`, checkpoints every ``checkpoint_every`` steps in ``.{run_dir}.work``
  with the run's fingerprint (a resumed run ends bit-identical on CPU), the run-directory checks
  (:func:`~jsae.train.run.check_out_dir`: a finished identical run is skipped), atomic writes, MLflow through
  :class:`jsae.tracking.Tracker` (nested under the study's run). :class:`TranscoderTrainer` is a
  :class:`~jsae.train.trainer.TrainerBase`, as the pair's :class:`~jsae.train.trainer.Trainer` is: the same loop,
  checkpoints and log, its own step; the run directory is written by :func:`~jsae.train.run.run_and_write`.
* **The model's own choices.** Loss: ``MSE(y, y_hat)`` in the scaled units (eq. 5's output term, without the
  input SAE's term and the Jacobian's); sparsify's initialisation (:class:`~jsae.nn.transcoder.TopKTranscoder`),
  with ``b_enc`` and ``b_dec`` from the means of the first :data:`~jsae.train.run.NORM_ESTIMATE_TOKENS` tokens of the
  data order (sparsify: its first batch); no decoder renormalisation (sparsify does none for transcoders).

Logged metrics (``train/…``, :mod:`jsae.train.keys`' names where the quantity is the pair's): ``train/loss`` (the
objective), ``train/out/mse`` (of y, as a pair's output SAE), ``train/out/auxk_mse``, ``train/out/dead_fraction``
and ``train/out/dead_count`` (the transcoder's latents: the dictionary that writes the MLP output), ``train/lr``,
``train/tokens``, ``train/tokens_per_s``, ``train/reader_wait_fraction``. No ``lam``, no ``jac/…``.

The run directory: ``transcoder/`` in sparsify's on-disk format (``cfg.json`` + ``sae.safetensors``, loadable by
``sparsify.SparseCoder.load_from_disk``; our metadata under ``cfg.json``'s ``jsae`` key), ``metrics.jsonl`` and
``run.json`` (written last, atomically with the rest).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jsae import __version__
from jsae.devices import DTYPES, resolve_device
from jsae.io import atomic_dir, read_json, write_json
from jsae.nn.mlp import MLP, mlp_from_module
from jsae.nn.pair import mse
from jsae.nn.transcoder import TRANSCODER_METHODS, TopKTranscoder, check_method
from jsae.train import keys
from jsae.train.config import TrainConfig
from jsae.train.dead import DeadLatentTracker
from jsae.train.run import (
    NORM_ESTIMATE_TOKENS,
    RunSettings,
    cache_facts,
    check_cache_matches,
    check_pair_args,
    estimate_activation_scales,
    open_training_inputs,
    run_and_write,
    run_identity,
    run_json_fields,
    skip_finished,
    start_tracking,
)
from jsae.train.sources import BatchSource
from jsae.train.trainer import TrainerBase, TrainResult

log = logging.getLogger("jsae.train")

#: The baselines this module trains (``method``).
BASELINE_METHODS = tuple(TRANSCODER_METHODS)
#: The trained transcoder's directory in the run (sparsify's layout: ``cfg.json`` + ``sae.safetensors``).
CODER_DIRNAME = "transcoder"
SPARSIFY_WEIGHTS = "sae.safetensors"
SPARSIFY_CFG = "cfg.json"
#: Our facts in the transcoder's ``cfg.json`` (sparsify's loader drops keys it does not know).
CFG_METADATA_KEY = "jsae"
CHECKPOINT_KIND = "transcoder"

#: The loss parts summed over a log window -> their keys (the pair's names: the transcoder's error is y's).
WINDOW_MEANS = {"loss": keys.LOSS, "mse": keys.OUT_MSE, "auxk": keys.OUT_AUXK_MSE}


#: A baseline's path under runs/ and eval/ (run_name's layout; workflow/rules/study.smk BASELINE), as a regex.
RUN_PATH = (r"(?P<model>[^/]+)/L(?P<layer>\d+)/(?P<control>trained|reinit)/(?P<method>[a-z_]+)"
            r"/seed(?P<seed>\d+)")


def run_name(model: str, layer: int, control: str, method: str, seed: int) -> str:
    """The MLflow run name of a baseline: ``{model}/L{layer}/{control}/{method}/seed{seed}`` (its result path)."""
    return f"{model}/L{layer}/{control}/{method}/seed{seed}"


def check_baseline_config(config: TrainConfig) -> None:
    """A baseline is trained with lam = 0: it has no Jacobian term (one-line ``ValueError`` otherwise)."""
    if config.lam != 0:
        raise ValueError(f"lam={config.lam!r} is invalid for a transcoder baseline; expected 0 or absent "
                         "(a transcoder has no Jacobian term)")


def baseline_identity(config: TrainConfig, *, method: str, model: str, layer: int, control: str) -> dict[str, Any]:
    """What makes a baseline run this run: the pair's identity (:func:`jsae.train.run.run_identity`) and ``method``."""
    return {"method": method, **run_identity(config, model=model, layer=layer, control=control)}


def transcoder_dims(config: TrainConfig, d_in: int, d_out: int) -> dict[str, int]:
    """The transcoder's ``n_latents`` and ``k`` (the pair's input SAE's: :meth:`TrainConfig.dims`) and AuxK's
    ``k_aux`` (``auxk_k``, else half the output width, as Gao et al. and sparsify; at most ``n_latents``)."""
    dims = config.dims(d_in, d_out)
    n = dims["n_latents_in"]
    k_aux = config.auxk_k if config.auxk_k is not None else max(1, d_out // 2)
    return {"n_latents": n, "k": dims["k_in"], "k_aux": min(k_aux, n)}


def build_transcoder(mlp: MLP | torch.nn.Module, config: TrainConfig, method: str, *,
                     device: torch.device | str = "cpu") -> TopKTranscoder:
    """A freshly initialised transcoder for ``mlp`` (init seed ``2·seed``, the pair's input SAE's)."""
    mlp = mlp_from_module(mlp)
    dims = transcoder_dims(config, mlp.d_in, mlp.d_out)
    skip = TRANSCODER_METHODS[check_method(method)]
    return TopKTranscoder(mlp.d_in, mlp.d_out, dims["n_latents"], dims["k"], skip=skip, seed=2 * config.seed,
                          dtype=DTYPES[config.dtype], device=device)


@torch.no_grad()
def data_means(mlp: MLP, source: BatchSource, config: TrainConfig, scales: tuple[float, float], *,
               device: torch.device | str = "cpu", n_tokens: int = NORM_ESTIMATE_TOKENS) -> tuple[Tensor, Tensor]:
    """Means of the scaled x and y = MLP(x) over the first ``n_tokens`` of the training order (float64 ``[d_in]``,
    ``[d_out]``): what :meth:`TopKTranscoder.init_biases_` starts from (the same tokens as the scale estimate)."""
    sx = torch.zeros(mlp.d_in, dtype=torch.float64)
    sy = torch.zeros(mlp.d_out, dtype=torch.float64)
    seen = 0
    for batch in source.batches(min(config.batch_size, n_tokens), seed=config.seed):
        x = batch.to(device=device, dtype=mlp.W_out.dtype)
        sx += x.double().sum(0).cpu()
        sy += mlp(x).double().sum(0).cpu()
        seen += x.shape[0]
        if seen >= n_tokens:
            break
    return sx / seen * scales[0], sy / seen * scales[1]


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepParts:
    """Detached results of one step: the objective, the MSE of y and AuxK's MSE (scaled units), the latents."""

    loss: Tensor
    mse: Tensor
    auxk: Tensor
    vals: Tensor
    idx: Tensor


class TranscoderTrainer(TrainerBase):
    """Trains ``transcoder`` in place to map ``input_scale * x`` to ``output_scale * MLP(x)``; checkpoints into
    ``work_dir`` (the recipe and machinery of :class:`jsae.train.trainer.TrainerBase`; resume with the same
    arguments is exact)."""

    window_means = WINDOW_MEANS
    checkpoint_kind = CHECKPOINT_KIND

    def __init__(
        self,
        transcoder: TopKTranscoder,
        mlp: MLP | torch.nn.Module,
        source: BatchSource,
        config: TrainConfig,
        *,
        scales: tuple[float, float] = (1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        check_baseline_config(config)
        mlp = mlp_from_module(mlp)
        if source.d_model != transcoder.d_in or mlp.d_in != transcoder.d_in or mlp.d_out != transcoder.d_out:
            raise ValueError(f"the cache holds activations of width {source.d_model} and the MLP maps "
                             f"{mlp.d_in} -> {mlp.d_out}; expected the transcoder's {transcoder.d_in} -> "
                             f"{transcoder.d_out}")
        super().__init__(source, config, transcoder.parameters(), **kwargs)
        self.tc = transcoder
        self.mlp = mlp.to(self.device)
        self.input_scale, self.output_scale = float(scales[0]), float(scales[1])
        self.dead = DeadLatentTracker(transcoder.n_latents, config.dead_window_tokens, self.device)
        self.k_aux = transcoder_dims(config, transcoder.d_in, transcoder.d_out)["k_aux"]

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {"transcoder": self.tc}

    def dead_trackers(self) -> dict[str, DeadLatentTracker]:
        return {"out": self.dead}  # its latents write the MLP output, as the output SAE's

    def targets(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(input_scale * x, output_scale * MLP(x))`` in the transcoder's dtype (the MLP runs in its own, frozen)."""
        dtype = self.tc.W_enc.dtype
        with torch.no_grad():
            y = self.mlp(x.to(self.mlp.W_out.dtype)).to(dtype)
        x = x.to(dtype)
        return (x * self.input_scale if self.input_scale != 1.0 else x,
                y * self.output_scale if self.output_scale != 1.0 else y)

    def loss(self, x: Tensor) -> tuple[Tensor, StepParts]:
        """The differentiable objective on a batch of raw MLP inputs ``x`` and its detached parts:
        ``MSE(y, y_hat)`` (+ ``auxk_coef`` x AuxK's MSE of the error from the dead latents)."""
        x_s, y_s = self.targets(x)
        cfg = self.config
        with self._autocast():
            if cfg.auxk_coef > 0:
                vals, idx, aux_vals, aux_idx = self.tc.encode_with_aux(x_s, self.dead.dead_mask(), self.k_aux)
            else:
                vals, idx = self.tc.encode(x_s)
            y_hat = self.tc.decode(vals, idx, x_s)
            err = mse(y_s, y_hat)
            total = err
            aux = torch.zeros((), dtype=err.dtype, device=err.device)
            if cfg.auxk_coef > 0:
                aux = mse((y_s - y_hat).detach(), self.tc.decode_directions(aux_vals, aux_idx))
                total = total + cfg.auxk_coef * aux
        return total, StepParts(err.detach(), err.detach(), aux.detach(), vals.detach(), idx.detach())

    def train_step(self, x: Tensor) -> StepParts:
        """One optimiser step at ``self.step`` (the LR from the step); returns the step's parts."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        loss, parts = self.loss(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.dead.update(parts.vals, parts.idx)
        self.step += 1
        return parts


# --------------------------------------------------------------------------------------------------
# On disk: sparsify's format
# --------------------------------------------------------------------------------------------------


def sparsify_state_dict(tc: TopKTranscoder) -> dict[str, Tensor]:
    """The transcoder as ``sparsify.SparseCoder``'s state dict (``encoder.weight``, ``encoder.bias``, ``W_dec``,
    ``b_dec``, and ``W_skip`` for a skip transcoder): the same tensors, since a sparsify transcoder's encoder does
    not subtract ``b_dec`` (only its autoencoders do)."""
    out = {"encoder.weight": tc.W_enc, "encoder.bias": tc.b_enc, "W_dec": tc.W_dec, "b_dec": tc.b_dec}
    if tc.W_skip is not None:
        out["W_skip"] = tc.W_skip
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def sparsify_config(tc: TopKTranscoder, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """sparsify's ``cfg.json`` (``SparseCoderConfig`` fields and ``d_in``) with ``transcode`` and
    ``skip_connection`` set, plus our facts under :data:`CFG_METADATA_KEY` (``d_out``, ``method``, ...)."""
    return {"activation": "topk", "expansion_factor": max(1, tc.n_latents // tc.d_in), "normalize_decoder": False,
            "num_latents": tc.n_latents, "k": tc.k, "multi_topk": False, "skip_connection": tc.skip,
            "transcode": True, "d_in": tc.d_in,
            CFG_METADATA_KEY: {"d_out": tc.d_out, "method": tc.method,
                               "dtype": str(tc.W_enc.dtype).removeprefix("torch."), **(metadata or {})}}


def save_transcoder(tc: TopKTranscoder, path: str | os.PathLike[str],
                    metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``tc`` as a sparsify directory (``cfg.json`` + ``sae.safetensors``), atomically."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file(sparsify_state_dict(tc), str(tmp / SPARSIFY_WEIGHTS), metadata={"format": "pt"})
        write_json(tmp / SPARSIFY_CFG, sparsify_config(tc, metadata))


def load_transcoder(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> TopKTranscoder:
    """A transcoder written by :func:`save_transcoder` (or a sparsify transcoder directory)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / SPARSIFY_CFG).is_file() or not (p / SPARSIFY_WEIGHTS).is_file():
        raise FileNotFoundError(f"{p} holds no transcoder; expected {SPARSIFY_CFG} and {SPARSIFY_WEIGHTS} "
                                "(python -m jsae train-baseline)")
    cfg = read_json(p / SPARSIFY_CFG)
    if not cfg.get("transcode") or cfg.get("activation", "topk") != "topk":
        raise ValueError(f"{p / SPARSIFY_CFG} is not a TopK transcoder (transcode={cfg.get('transcode')!r}, "
                         f"activation={cfg.get('activation')!r}); expected transcode true and activation topk")
    try:
        state = load_file(str(p / SPARSIFY_WEIGHTS))
    except SafetensorError as exc:
        raise ValueError(f"{p / SPARSIFY_WEIGHTS} cannot be read ({exc}); expected the weights written with "
                         f"{SPARSIFY_CFG}") from None
    W, W_dec = state.get("encoder.weight"), state.get("W_dec")
    if W is None or W_dec is None or "encoder.bias" not in state or "b_dec" not in state:
        raise ValueError(f"{p / SPARSIFY_WEIGHTS} lacks sparsify's tensors; expected encoder.weight, encoder.bias, "
                         "W_dec and b_dec")
    skip = bool(cfg.get("skip_connection"))
    if skip != ("W_skip" in state):
        raise ValueError(f"{p} has skip_connection={skip} but {'no ' if skip else 'a '}W_skip tensor; "
                         "expected both to agree")
    tc = TopKTranscoder(W.shape[1], W_dec.shape[1], W.shape[0], int(cfg["k"]), skip=skip, dtype=W.dtype)
    tc.load_state_dict({"W_enc": state["encoder.weight"], "b_enc": state["encoder.bias"], "W_dec": W_dec,
                        "b_dec": state["b_dec"], **({"W_skip": state["W_skip"]} if skip else {})})
    return tc.to(device)


# --------------------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineRecord:
    """One baseline run's facts: run.json, the MLflow params and tags and the transcoder's metadata derive from them."""

    method: str
    model: str
    model_name: str
    layer: int
    control: str
    config: TrainConfig
    dims: Mapping[str, int]  # n_latents, k, k_aux
    mlp: Mapping[str, Any]  # d_in, d_mlp, d_out, mlp_kind
    hook: str | None
    hook_name: str
    cache: Mapping[str, Any]
    activation_scales: Mapping[str, float]
    device: str
    autocast: str | None

    @property
    def names(self) -> dict[str, Any]:
        """What names the run: method, model, layer, control and the training seed (no lambda)."""
        return {"method": self.method, "model": self.model, "layer": self.layer, "control": self.control,
                "seed": self.config.seed}

    @property
    def identity(self) -> dict[str, Any]:
        return baseline_identity(self.config, method=self.method, model=self.model, layer=self.layer,
                                 control=self.control)

    def params(self) -> dict[str, Any]:
        """MLflow params: the pairs' stable names (model, layer, control, seed, ``k``, ``n_latents`` — here the
        transcoder's own), ``method``, and the recipe; ``lambda`` is absent (a transcoder has no Jacobian term),
        and so are the output SAE's ``k_out`` / ``n_latents_out``."""
        skip = ("lam", "k_out", "n_latents_out")
        return {
            **{key: value for key, value in self.identity.items() if key not in skip},
            "k": self.dims["k"], "n_latents": self.dims["n_latents"], "k_aux": self.dims["k_aux"], **self.mlp,
            "n_steps": self.config.n_steps, "model_name": self.model_name, "device": self.device,
            "jsae_version": __version__, "input_scale": self.activation_scales["in"],
            "output_scale": self.activation_scales["out"],
            "cache": {k: v for k, v in self.cache.items() if isinstance(v, (str, int, float, bool))},
        }

    def tags(self, study: str | None = None) -> dict[str, Any]:
        tags = {"model": self.model_name, "layer": self.layer, "control": self.control, "method": self.method}
        return {"study": study, **tags} if study else tags

    def metadata(self) -> dict[str, Any]:
        """The transcoder's ``cfg.json`` metadata: what it was trained on and where it reads and writes."""
        return {"model_name": self.model, "hook_layer": self.layer, "hook_name": self.hook_name,
                "reads": "MLP input x", "writes": "MLP output y", "control": self.control, "seed": self.config.seed,
                "context_size": self.cache.get("context_length"), "jsae_version": __version__}

    def to_json(self, result: TrainResult, *, metrics: Mapping[str, float], session_wall_s: float,
                mlflow_uri: str | None, experiment: str, mlflow_status: str) -> dict[str, Any]:
        """run.json: the fields of a pair's (:func:`jsae.train.run.run_json_fields`) and the ``baseline`` section."""
        return {
            **run_json_fields(self, result, metrics=metrics, session_wall_s=session_wall_s, mlflow_uri=mlflow_uri,
                              experiment=experiment, mlflow_status=mlflow_status),
            "baseline": {**self.names, "k": self.dims["k"], "n_latents": self.dims["n_latents"],
                         "skip": TRANSCODER_METHODS[self.method], "coder": CODER_DIRNAME},
        }


def train_baseline(mlp: MLP | torch.nn.Module, source: BatchSource, config: TrainConfig,
                   out_dir: str | os.PathLike[str], *, method: str, model: str, layer: int, control: str = "trained",
                   force: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Train one baseline into ``out_dir`` from an MLP and a batch source; returns run.json's content (a finished
    identical run is skipped and its record returned). ``kwargs``: :func:`_train`'s."""
    done = _check_args(config, out_dir, method=method, model=model, layer=layer, control=control, force=force)
    if done is not None:
        return done
    check_cache_matches(source.attrs, model=None, layer=layer)
    return _train(mlp_from_module(mlp), source, config, Path(out_dir), method=method, model=model, layer=layer,
                  control=control, **kwargs)


def train_baseline_from_files(model: str, layer: int, cache_path: str | os.PathLike[str],
                              out_dir: str | os.PathLike[str], config: TrainConfig, *, method: str,
                              control: str = "trained", force: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Open the cache, check it belongs to (model, layer), load the model's MLP and train (cheap checks first)."""
    done = _check_args(config, out_dir, method=method, model=model, layer=layer, control=control, force=force)
    if done is not None:
        return done
    mlp, cache, mlp_path = open_training_inputs(model, layer, cache_path)
    return _train(mlp, cache, config, Path(out_dir), method=method, model=model, layer=layer, control=control,
                  hook_name=mlp_path, **kwargs)


def _check_args(config: TrainConfig, out_dir: str | os.PathLike[str], *, method: str, model: str, layer: int,
                control: str, force: bool) -> dict[str, Any] | None:
    """The cheap checks, before anything is loaded; the finished identical run at ``out_dir`` if there is one."""
    check_method(method)
    check_baseline_config(config)
    check_pair_args(layer=layer, control=control)
    identity = baseline_identity(config, method=method, model=model, layer=layer, control=control)
    return skip_finished(out_dir, identity, force=force)


def _train(
    mlp: MLP,
    source: BatchSource,
    config: TrainConfig,
    out_dir: Path,
    *,
    method: str,
    model: str,
    layer: int,
    control: str,
    **kwargs: Any,
) -> dict[str, Any]:
    """Train a checked baseline and write its run directory (as :func:`jsae.train.run._train` writes a pair's;
    ``kwargs``: :class:`~jsae.train.run.RunSettings`)."""
    opts = RunSettings(**kwargs)
    attrs = cache_facts(source, config)
    dev = resolve_device(opts.device)
    mlp = mlp.to(dev)
    tc = build_transcoder(mlp, config, method, device=dev)
    scales = {"in": 1.0, "out": 1.0}
    if config.normalize_activations == "expected_norm":
        scales["in"], scales["out"] = estimate_activation_scales(mlp, source, config, device=dev)
        log.info("activation scales (expected_norm): input x%.4g, output x%.4g", scales["in"], scales["out"])
    tc.init_biases_(*data_means(mlp, source, config, (scales["in"], scales["out"]), device=dev))
    identity = baseline_identity(config, method=method, model=model, layer=layer, control=control)
    trainer = TranscoderTrainer(tc, mlp, source, config, device=dev, fingerprint={"identity": identity, "cache": attrs},
                                scales=(scales["in"], scales["out"]), **opts.trainer_kwargs(out_dir))
    resumed = trainer.restore()
    dims = transcoder_dims(config, mlp.d_in, mlp.d_out)
    short_name, mlp_path = opts.names(model, attrs, layer)
    record = BaselineRecord(
        method=method, model=model, model_name=short_name, layer=layer, control=control, config=config, dims=dims,
        mlp={"d_in": mlp.d_in, "d_mlp": mlp.d_hidden, "d_out": mlp.d_out, "mlp_kind": mlp.kind},
        hook=attrs.get("hook"), hook_name=mlp_path, cache=attrs, activation_scales=scales, device=str(dev),
        autocast=str(trainer.autocast).replace("torch.", "") if trainer.autocast else None,
    )
    tracker = start_tracking(trainer, record, run_name(short_name, layer, control, method, config.seed), source, opts)
    log.info("training %s %s layer %d (%s): %d steps x %d tokens, %d latents, k %d, device %s%s", method,
             record.model_name, layer, control, config.n_steps, config.batch_size, dims["n_latents"], dims["k"], dev,
             f", resumed at step {trainer.step}" if resumed else "")

    def save(tmp: Path) -> tuple[str, ...]:
        tc.fold_scales_(scales["in"], scales["out"])  # the saved transcoder maps raw x to raw y
        save_transcoder(tc, tmp / CODER_DIRNAME, record.metadata())
        return (CODER_DIRNAME,)

    run_json, final = run_and_write(trainer, tracker, record, out_dir, opts, save=save)
    log.info("finished %s %s: train loss %.4g, dead %.3f -> %s", method, record.model_name,
             final.get(keys.LOSS, float("nan")), final[keys.OUT_DEAD_FRACTION], out_dir)
    return run_json
