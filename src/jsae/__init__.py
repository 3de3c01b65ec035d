"""jsae: Jacobian sparse autoencoders (Farnik et al., ICML 2025) as a reproducible pipeline."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public names, imported on first use (PEP 562): `python -m jsae gpu-slot` and the config checks import the
# package without paying for torch (~2 s per process); `from jsae import JSAEPair` works as before.
_LAZY = {
    "load_pair": "jsae.export",
    "active_jacobian": "jsae.nn.jacobian",
    "jacobian_authors_formulation": "jsae.nn.jacobian",
    "MLP": "jsae.nn.mlp",
    "GatedMLP": "jsae.nn.mlp",
    "PlainMLP": "jsae.nn.mlp",
    "mlp_from_module": "jsae.nn.mlp",
    "EVALUATION_POINT": "jsae.nn.pair",
    "JSAEPair": "jsae.nn.pair",
    "LossParts": "jsae.nn.pair",
    "PairOutput": "jsae.nn.pair",
    "jacobian_l1": "jsae.nn.pair",
    "mse": "jsae.nn.pair",
    "TopKSAE": "jsae.nn.sae",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jsae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
