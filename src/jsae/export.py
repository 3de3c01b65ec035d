"""Save and load trained pairs in SAELens's on-disk format (``sae-lens`` 6.x, ``SAE.load_from_disk``).

A run directory holds ``sae_in/`` and ``sae_out/``, each with ``cfg.json`` and
``sae_weights.safetensors``, plus ``run.json`` (written by :mod:`jsae.train.run`).

SAELens's layout differs from ours in one place: it stores ``W_enc`` as ``[d_in, d_sae]`` (its
encoder is ``x @ W_enc``), the transpose of our ``[n_latents, d_in]``. ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]`` and ``b_dec [d_in]`` are the same. Its config must say
``"apply_b_dec_to_input": false`` (our encoder does not subtract ``b_dec``; SAELens defaults to
true) and give ``k`` (SAELens silently defaults a missing ``k`` to 100).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from jsae.devices import DTYPES
from jsae.io import atomic_dir, read_json, write_json
from jsae.nn.mlp import MLP
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE

log = logging.getLogger("jsae.export")

SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SAE_CFG_FILENAME = "cfg.json"
RUN_FILENAME = "run.json"
#: The SAELens release whose format we write (and test against when it is installed).
SAE_LENS_FORMAT_VERSION = "6.54.12"
#: Exactly the tensors SAELens's TopK SAE has, with their shapes in SAELens's convention.
SAE_LENS_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")
#: role -> (suffix of its SAELens hook_name, hook_point recorded in metadata)
SAE_ROLES = {"sae_in": ("input", "mlp_input"), "sae_out": ("output", "mlp_output")}

_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def to_sae_lens_state_dict(sae: TopKSAE) -> dict[str, torch.Tensor]:
    """Our parameters in SAELens's layout (``W_enc`` transposed to ``[d_in, d_sae]``), on the CPU."""
    return {
        "W_enc": sae.W_enc.detach().t().contiguous().cpu(),
        "b_enc": sae.b_enc.detach().contiguous().cpu(),
        "W_dec": sae.W_dec.detach().contiguous().cpu(),
        "b_dec": sae.b_dec.detach().contiguous().cpu(),
    }


def sae_lens_config(sae: TopKSAE, *, hook_name: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``cfg.json`` SAELens needs to rebuild ``sae`` as its ``TopKSAE`` with identical encodings."""
    dtype = sae.W_enc.dtype
    if dtype not in _DTYPE_NAMES:
        raise TypeError(f"SAE dtype {dtype} cannot be exported; expected one of {', '.join(_DTYPE_NAMES.values())}")
    meta = {"sae_lens_version": SAE_LENS_FORMAT_VERSION, "sae_lens_training_version": None, "hook_name": hook_name}
    meta.update(metadata or {})
    meta["hook_name"] = hook_name
    return {
        "architecture": "topk",
        "d_in": sae.d_in,
        "d_sae": sae.n_latents,
        "k": sae.k,
        "dtype": _DTYPE_NAMES[dtype],
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": meta,
    }


def save_sae(sae: TopKSAE, path: str | os.PathLike[str], *, hook_name: str,
             metadata: dict[str, Any] | None = None) -> None:
    """Write one SAE as a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``), atomically."""
    cfg = sae_lens_config(sae, hook_name=hook_name, metadata=metadata)
    with atomic_dir(path) as tmp:
        save_file(to_sae_lens_state_dict(sae), str(tmp / SAE_WEIGHTS_FILENAME), metadata={"format": "pt"})
        write_json(tmp / SAE_CFG_FILENAME, cfg)


def read_sae_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A SAELens ``cfg.json``, checked for what our loader relies on (one-line errors otherwise)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} does not exist; expected a SAELens SAE directory with {SAE_CFG_FILENAME}")
    cfg = read_json(p / SAE_CFG_FILENAME)
    if cfg.get("architecture") != "topk":
        raise ValueError(f"{p / SAE_CFG_FILENAME} has architecture={cfg.get('architecture')!r}; expected 'topk'")
    if cfg.get("apply_b_dec_to_input", True):
        raise ValueError(f"{p / SAE_CFG_FILENAME} has apply_b_dec_to_input true (or missing); expected false")
    for key in ("d_in", "d_sae", "k", "dtype"):
        if key not in cfg:
            raise ValueError(f"{p / SAE_CFG_FILENAME} lacks {key!r}; expected d_in, d_sae, k and dtype")
    if cfg["dtype"] not in DTYPES:
        raise ValueError(f"{p / SAE_CFG_FILENAME} has dtype={cfg['dtype']!r}; expected one of {', '.join(DTYPES)}")
    return cfg


def load_sae(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> TopKSAE:
    """Load a SAE written by :func:`save_sae` (or any SAELens TopK SAE without input ``b_dec``)."""
    p = Path(path)
    cfg = read_sae_config(p)
    weights = p / SAE_WEIGHTS_FILENAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist; expected the SAE's safetensors file")
    state = load_file(str(weights), device="cpu")
    if sorted(state) != sorted(SAE_LENS_TENSORS):
        raise ValueError(f"{weights} holds tensors {sorted(state)}; expected exactly {sorted(SAE_LENS_TENSORS)}")
    d_in, n, k = int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["k"])
    expected = {"W_enc": (d_in, n), "b_enc": (n,), "W_dec": (n, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{weights}: {name} has shape {tuple(state[name].shape)}; expected {shape} from cfg.json")
    dtype = DTYPES[cfg["dtype"]]
    sae = TopKSAE(d_in, n, k, seed=0, dtype=dtype)
    ours = {"W_enc": state["W_enc"].t().contiguous(), "b_enc": state["b_enc"], "W_dec": state["W_dec"],
            "b_dec": state["b_dec"]}
    sae.load_state_dict({name: t.to(dtype) for name, t in ours.items()})
    return sae.to(device)


def save_pair(pair: JSAEPair, run_dir: str | os.PathLike[str], *, hook_name: str, metadata: dict[str, Any]) -> None:
    """Write ``run_dir/sae_in`` and ``run_dir/sae_out`` in SAELens's format.

    ``hook_name`` names the MLP (e.g. ``gpt_neox.layers.3.mlp``); the SAEs' SAELens ``hook_name``
    is ``{hook_name}.input`` and ``{hook_name}.output``. ``metadata`` goes into both configs, with
    ``sae_role`` and ``hook_point`` added.
    """
    run_dir = Path(run_dir)
    for role, sae in (("sae_in", pair.sae_in), ("sae_out", pair.sae_out)):
        suffix, point = SAE_ROLES[role]
        meta = {**metadata, "sae_role": role, "hook_point": point}
        save_sae(sae, run_dir / role, hook_name=f"{hook_name}.{suffix}", metadata=meta)


def load_pair(run_dir: str | os.PathLike[str], mlp: MLP | torch.nn.Module, *,
              device: torch.device | str = "cpu") -> JSAEPair:
    """Rebuild the :class:`JSAEPair` saved in ``run_dir`` around ``mlp`` (identical tensors)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} does not exist; expected a run directory with sae_in/ and sae_out/")
    pair = JSAEPair(load_sae(run_dir / "sae_in", device=device), load_sae(run_dir / "sae_out", device=device), mlp)
    return pair


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` of a finished run (hyper-parameters, cache attributes, timings, final metrics)."""
    path = Path(run_dir) / RUN_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a finished training run (run.json is written last)")
    return read_json(path)
