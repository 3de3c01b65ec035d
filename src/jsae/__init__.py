"""jsae: Jacobian sparse autoencoders (Farnik et al., ICML 2025) as a reproducible pipeline."""

from jsae.export import load_pair
from jsae.nn.jacobian import active_jacobian, jacobian_authors_formulation
from jsae.nn.mlp import MLP, GatedMLP, PlainMLP, mlp_from_module
from jsae.nn.pair import EVALUATION_POINT, JSAEPair, LossParts, PairOutput, jacobian_l1, mse
from jsae.nn.sae import TopKSAE

__version__ = "0.1.0"

__all__ = [
    "EVALUATION_POINT",
    "MLP",
    "GatedMLP",
    "JSAEPair",
    "LossParts",
    "PairOutput",
    "PlainMLP",
    "TopKSAE",
    "__version__",
    "active_jacobian",
    "jacobian_authors_formulation",
    "jacobian_l1",
    "load_pair",
    "mlp_from_module",
    "mse",
]
