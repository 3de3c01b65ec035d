"""Where the MLP sits in a Hugging Face causal LM, and hooks that read or replace its input/output.

One definition used by the cache, training, evaluation and probes, so the MLP input seen by every path
is the same tensor: what the MLP module receives, i.e. post-LayerNorm (tests/test_models.py checks it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

# Attribute paths (from the model) to the list of decoder blocks, by architecture family.
_LAYER_PATHS = ("gpt_neox.layers", "transformer.h", "model.layers", "model.decoder.layers", "layers", "h")


def _getattr_path(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (GPT-NeoX, GPT-2, Llama-family incl. Gemma 1-3, OPT-style)."""
    for path in _LAYER_PATHS:
        layers = _getattr_path(model, path)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(
        f"cannot find the transformer blocks of {type(model).__name__}; expected one of the attributes "
        f"{', '.join(_LAYER_PATHS)}"
    )


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def check_layer(model: nn.Module, layer: int) -> None:
    n = num_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer={layer!r} is out of range for {type(model).__name__}; "
                         f"expected an integer in [0, {n - 1}]")


def mlp_module(model: nn.Module, layer: int) -> nn.Module:
    """The MLP module of block ``layer`` (``.mlp`` in every supported family)."""
    check_layer(model, layer)
    block = decoder_layers(model)[layer]
    mlp = getattr(block, "mlp", None)
    if not isinstance(mlp, nn.Module):
        raise TypeError(f"block {layer} of {type(model).__name__} has no .mlp module; "
                        "expected a standard decoder block")
    return mlp


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early once the needed activation is captured."""


@contextlib.contextmanager
def replace_mlp_input(module: nn.Module, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the MLP module receives ``fn(x)`` instead of its input ``x``."""

    def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict):
        x = args[0] if args else kwargs["hidden_states"]
        new = fn(x)
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def replace_mlp_output(module: nn.Module, fn: Callable[[Tensor, Tensor], Tensor]) -> Iterator[None]:
    """The MLP module returns ``fn(x, y)`` (input, original output) instead of ``y``."""

    def hook(_mod: nn.Module, args: tuple, kwargs: dict, output: Tensor):
        x = args[0] if args else kwargs["hidden_states"]
        return fn(x, output)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def capture_mlp_input(model: nn.Module, layer: int, input_ids: Tensor, *, stop: bool = True, **kwargs) -> Tensor:
    """The MLP input of block ``layer`` for ``input_ids`` ``[batch, seq]`` -> ``[batch, seq, d]``.

    With ``stop=True`` the forward ends at that MLP (no later blocks, no LM head).
    """
    module = mlp_module(model, layer)
    captured: list[Tensor] = []

    def grab(x: Tensor) -> Tensor:
        captured.append(x.detach())
        if stop:
            raise StopForward
        return x

    with replace_mlp_input(module, grab), torch.no_grad():
        try:
            model(input_ids=input_ids, use_cache=False, **kwargs)
        except StopForward:
            pass
    if not captured:
        raise RuntimeError(f"the MLP of layer {layer} was never called during the forward of {type(model).__name__}")
    return captured[0]
