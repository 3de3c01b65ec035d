"""MLP adapters: the output equals the Hugging Face module's, the derivatives equal autograd's."""

from __future__ import annotations

import pytest
import torch
from builders import D, H
from torch import nn

from jsae import mlp_from_module
from jsae.nn.mlp import activation_from


def test_output_equals_module(hf_mlp):
    mlp = mlp_from_module(hf_mlp)
    x = torch.randn(9, D, dtype=torch.float64)
    with torch.no_grad():
        # bitwise for all but Phi-3, whose fused gate/up matmul rounds differently from two matmuls
        torch.testing.assert_close(mlp(x), hf_mlp(x), rtol=1e-12, atol=1e-12)
    assert (mlp.d_in, mlp.d_hidden, mlp.d_out) == (D, H, D)
    assert list(mlp.parameters()) == []  # frozen: weights are buffers
    assert mlp(torch.randn(2, 3, D, dtype=torch.float64)).shape == (2, 3, D)


def test_jacobian_terms_equal_autograd(hf_mlp):
    """dy/dx = W_out @ sum_m diag(d_m) @ W_m, per token, against torch.func.jacrev of the module."""
    mlp = mlp_from_module(hf_mlp)
    x = torch.randn(5, D, dtype=torch.float64)
    _, terms = mlp.jacobian_terms(x)
    for b in range(5):
        ours = sum(mlp.W_out @ (d[b, :, None] * W) for W, d in terms)
        ref = torch.func.jacrev(hf_mlp)(x[b])
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_weights_share_storage_with_module():
    from builders import build_hf_mlp

    module = build_hf_mlp("neox-gelu")
    mlp = mlp_from_module(module)
    assert mlp.W_in.data_ptr() == module.dense_h_to_4h.weight.data_ptr()


@pytest.mark.parametrize("name", ["gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "relu", "quick_gelu"])
def test_activation_derivatives(name):
    from transformers.activations import ACT2FN

    act = activation_from(ACT2FN[name])
    z = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    z = z[z.abs() > 1e-6]  # ReLU has no derivative at 0
    ref = torch.func.vmap(torch.func.grad(lambda t: ACT2FN[name](t)))(z)
    torch.testing.assert_close(act.derivative(z), ref, rtol=1e-10, atol=1e-12)


def test_unsupported_module_and_activation():
    with pytest.raises(TypeError, match="unsupported MLP module type Linear"):
        mlp_from_module(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        mlp_from_module("mlp")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unsupported MLP activation 'Tanh'"):
        activation_from(nn.Tanh())


def test_forward_equals_jacobian_terms_output(hf_mlp):
    mlp = mlp_from_module(hf_mlp)
    x = torch.randn(6, D, dtype=torch.float64)
    torch.testing.assert_close(mlp(x), mlp.jacobian_terms(x)[0], rtol=0, atol=0)

