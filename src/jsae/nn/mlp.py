"""Frozen adapters around transformer MLP modules that also return the Jacobian's diagonal factors.

Two families (paper appendix A):

* plain MLPs (GPT-NeoX/Pythia, GPT-2, GPT-J, OPT-style), eq. 8:
  ``z = W_in x + b_in``, ``y = W_out phi(z) + b_out``; dy/dx = W_out diag(phi'(z)) W_in (eq. 12);
* gated MLPs (Llama, Mistral, Qwen2, Gemma 1-3, SmolLM2, Phi-3), eqs. 17-21:
  ``g = W_gate x``, ``h = W_up x``, ``y = W_out (phi(g) * h)``;
  dy/dx = W_out [diag(h * phi'(g)) W_gate + diag(phi(g)) W_up] (the middle factor of eq. 29).

Each adapter exposes ``jacobian_terms(x) -> (y, [(W_m, d_m), ...])`` so that
``dy/dx = W_out @ sum_m diag(d_m) @ W_m`` for every token. The weights are buffers that share
storage with the Hugging Face module (no copy, never trained); the output is computed with the
module's own activation function so ``mlp(x)`` equals ``module(x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_erf_derivative(z: Tensor) -> Tensor:
    """d/dz [z Phi(z)] = Phi(z) + z N(z) for the exact (erf) GELU."""
    return 0.5 * (1.0 + torch.erf(z * _INV_SQRT_2)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


def gelu_tanh_derivative(z: Tensor) -> Tensor:
    """Derivative of 0.5 z (1 + tanh(c (z + 0.044715 z^3))), the tanh-approximate GELU."""
    t = torch.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z * z)


def silu_derivative(z: Tensor) -> Tensor:
    """d/dz [z sigmoid(z)] = sigmoid(z) (1 + z (1 - sigmoid(z)))."""
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def quick_gelu_derivative(z: Tensor) -> Tensor:
    """d/dz [z sigmoid(1.702 z)]."""
    s = torch.sigmoid(1.702 * z)
    return s + 1.702 * z * s * (1.0 - s)


def relu_derivative(z: Tensor) -> Tensor:
    """Heaviside step (0 at z = 0, as autograd's ReLU)."""
    return (z > 0).to(z.dtype)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: the module's own forward and our closed-form derivative."""

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]


_DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": gelu_erf_derivative,
    "gelu_tanh": gelu_tanh_derivative,
    "silu": silu_derivative,
    "quick_gelu": quick_gelu_derivative,
    "relu": relu_derivative,
}

# Hugging Face activation classes (transformers.activations and torch.nn) by the function they compute.
_ACTIVATION_CLASSES = {
    "GELUActivation": "gelu",
    "GELU": "gelu",  # torch.nn.GELU; approximate="tanh" is handled below
    "NewGELUActivation": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
    "GELUTanh": "gelu_tanh",
    "FastGELUActivation": "gelu_tanh",
    "SiLUActivation": "silu",
    "SiLU": "silu",
    "QuickGELUActivation": "quick_gelu",
    "ReLU": "relu",
}
_ACTIVATION_FUNCTIONS = {F.gelu: "gelu", F.silu: "silu", F.relu: "relu", torch.relu: "relu"}


def activation_from(act: object) -> Activation:
    """Identify a module's activation; ``TypeError`` for one without a closed-form derivative here."""
    name = None
    if isinstance(act, str):
        key = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "swish": "silu"}
        name = key.get(act, act) if key.get(act, act) in _DERIVATIVES else None
        fn = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu, "quick_gelu": lambda z: z * torch.sigmoid(1.702 * z),
              "gelu_tanh": lambda z: F.gelu(z, approximate="tanh")}.get(name) if name else None
    else:
        cls = type(act).__name__
        name = _ACTIVATION_CLASSES.get(cls) or _ACTIVATION_FUNCTIONS.get(act)  # type: ignore[call-overload]
        if cls == "GELU" and getattr(act, "approximate", "none") == "tanh":
            name = "gelu_tanh"
        fn = act  # type: ignore[assignment]
    if name is None or fn is None:
        desc = act if isinstance(act, str) else type(act).__name__
        raise TypeError(
            f"unsupported MLP activation {desc!r}; expected one of GELU (erf or tanh), SiLU, QuickGELU, ReLU"
        )
    return Activation(name, fn, _DERIVATIVES[name])  # type: ignore[arg-type]


def _weight(linear: nn.Module, *, conv1d: bool = False) -> tuple[Tensor, Tensor | None]:
    """``(W [out, in], b)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (which stores ``[in, out]``)."""
    w = linear.weight.detach()
    b = linear.bias.detach() if getattr(linear, "bias", None) is not None else None
    return (w.t() if conv1d else w), b


class MLP(nn.Module):
    """Base class: a frozen MLP ``x [..., d_in] -> y [..., d_out]`` with closed-form Jacobian factors."""

    W_out: Tensor
    b_out: Tensor | None
    kind: str

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        self.activation = activation

    @property
    def d_in(self) -> int:
        return int(self.input_weights()[0].shape[1])

    @property
    def d_hidden(self) -> int:
        return int(self.W_out.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_out.shape[0])

    def input_weights(self) -> list[Tensor]:
        raise NotImplementedError

    def jacobian_terms(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """``(y, [(W_m, d_m)])`` with ``dy/dx = W_out @ sum_m diag(d_m) @ W_m`` per token."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}, d_out={self.d_out}, activation={self.activation.name}"


class PlainMLP(MLP):
    """``y = W_out phi(W_in x + b_in) + b_out`` (eq. 8)."""

    kind = "plain"

    def __init__(self, W_in: Tensor, b_in: Tensor | None, W_out: Tensor, b_out: Tensor | None, activation: Activation):
        super().__init__(activation)
        self.register_buffer("W_in", W_in)
        self.register_buffer("b_in", b_in)
        self.register_buffer("W_out", W_out)
        self.register_buffer("b_out", b_out)

    def input_weights(self) -> list[Tensor]:
        return [self.W_in]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.activation.fn(F.linear(x, self.W_in, self.b_in)), self.W_out, self.b_out)

    def jacobian_terms(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        z = F.linear(x, self.W_in, self.b_in)
        y = F.linear(self.activation.fn(z), self.W_out, self.b_out)
        return y, [(self.W_in, self.activation.derivative(z))]


class GatedMLP(MLP):
    """``y = W_out (phi(W_gate x + b_gate) * (W_up x + b_up)) + b_out`` (eqs. 17-21)."""

    kind = "gated"

    def __init__(
        self,
        W_gate: Tensor,
        b_gate: Tensor | None,
        W_up: Tensor,
        b_up: Tensor | None,
        W_out: Tensor,
        b_out: Tensor | None,
        activation: Activation,
    ):
        super().__init__(activation)
        self.register_buffer("W_gate", W_gate)
        self.register_buffer("b_gate", b_gate)
        self.register_buffer("W_up", W_up)
        self.register_buffer("b_up", b_up)
        self.register_buffer("W_out", W_out)
        self.register_buffer("b_out", b_out)

    def input_weights(self) -> list[Tensor]:
        return [self.W_gate, self.W_up]

    def forward(self, x: Tensor) -> Tensor:
        gate = self.activation.fn(F.linear(x, self.W_gate, self.b_gate))
        return F.linear(gate * F.linear(x, self.W_up, self.b_up), self.W_out, self.b_out)

    def jacobian_terms(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        g = F.linear(x, self.W_gate, self.b_gate)
        h = F.linear(x, self.W_up, self.b_up)
        s = self.activation.fn(g)
        y = F.linear(s * h, self.W_out, self.b_out)
        # eq. 29's middle factor: diag(h * phi'(g)) W_gate + diag(s) W_up
        return y, [(self.W_gate, h * self.activation.derivative(g)), (self.W_up, s)]


# (input Linear, output Linear, activation attribute) for plain MLPs, by attribute names.
_PLAIN_LAYOUTS = (
    ("dense_h_to_4h", "dense_4h_to_h", "act"),  # GPT-NeoX / Pythia
    ("c_fc", "c_proj", "act"),  # GPT-2 (Conv1D)
    ("fc_in", "fc_out", "act"),  # GPT-J, CodeGen
    ("fc1", "fc2", "activation_fn"),  # OPT-style, CLIP
    ("fc1", "fc2", "act"),
)
SUPPORTED = (
    "GPTNeoXMLP, GPT2MLP, GPTJMLP, *MLP with fc1/fc2, LlamaMLP, MistralMLP, Qwen2MLP, GemmaMLP, Gemma2/3MLP, Phi3MLP"
)


def mlp_from_module(module: nn.Module) -> MLP:
    """Wrap a Hugging Face MLP module in a frozen :class:`MLP` whose ``forward`` equals the module's.

    Recognised by structure: ``gate_proj``/``up_proj``/``down_proj``/``act_fn`` (gated),
    ``gate_up_proj``/``down_proj`` (Phi-3, fused gate and up), or a plain in/out pair listed in
    ``_PLAIN_LAYOUTS``. Anything else raises ``TypeError`` naming the class.
    """
    if isinstance(module, MLP):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"mlp_from_module got a {type(module).__name__}; expected a torch.nn.Module MLP ({SUPPORTED})")
    if all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        (Wg, bg), (Wu, bu) = _weight(module.gate_proj), _weight(module.up_proj)
        Wo, bo = _weight(module.down_proj)
        return GatedMLP(Wg, bg, Wu, bu, Wo, bo, activation_from(module.act_fn))
    if all(hasattr(module, a) for a in ("gate_up_proj", "down_proj")):
        W, b = _weight(module.gate_up_proj)
        half = W.shape[0] // 2
        act = getattr(module, "activation_fn", None) or module.act_fn
        Wo, bo = _weight(module.down_proj)
        bg, bu = (b[:half], b[half:]) if b is not None else (None, None)
        return GatedMLP(W[:half], bg, W[half:], bu, Wo, bo, activation_from(act))
    for fc_in, fc_out, act_name in _PLAIN_LAYOUTS:
        if all(hasattr(module, a) for a in (fc_in, fc_out, act_name)):
            conv1d = type(getattr(module, fc_in)).__name__ == "Conv1D"
            Wi, bi = _weight(getattr(module, fc_in), conv1d=conv1d)
            Wo, bo = _weight(getattr(module, fc_out), conv1d=conv1d)
            return PlainMLP(Wi, bi, Wo, bo, activation_from(getattr(module, act_name)))
    raise TypeError(f"unsupported MLP module type {type(module).__name__}; expected one of: {SUPPORTED}")
