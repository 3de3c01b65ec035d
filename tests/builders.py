"""Tiny real Hugging Face MLP modules built from configs (no downloads), shared by the tests."""

from __future__ import annotations

import torch

D, H = 12, 40  # model width and MLP width of the tiny modules


def build_hf_mlp(name: str, seed: int = 0) -> torch.nn.Module:
    """A real transformers MLP module of the named family with random float64 weights."""
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, Phi3Config
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXMLP
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.phi3.modeling_phi3 import Phi3MLP

    neox = lambda act: GPTNeoXMLP(GPTNeoXConfig(hidden_size=D, intermediate_size=H, hidden_act=act, num_attention_heads=2))  # noqa: E731
    builders = {
        "neox-gelu": lambda: neox("gelu"),
        "neox-gelu-tanh": lambda: neox("gelu_pytorch_tanh"),
        "neox-silu": lambda: neox("silu"),
        "neox-relu": lambda: neox("relu"),
        "gpt2-gelu-new": lambda: GPT2MLP(H, GPT2Config(n_embd=D, n_head=2)),
        "llama-silu": lambda: LlamaMLP(LlamaConfig(hidden_size=D, intermediate_size=H, num_attention_heads=2, mlp_bias=True)),
        "gemma3-gelu-tanh": lambda: Gemma3MLP(Gemma3TextConfig(hidden_size=D, intermediate_size=H, num_attention_heads=2, head_dim=6)),
        "phi3-fused": lambda: Phi3MLP(Phi3Config(hidden_size=D, intermediate_size=H, num_attention_heads=2)),
    }
    torch.manual_seed(seed)
    module = builders[name]().double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.4)
    return module


PLAIN_MLPS = ["neox-gelu", "neox-gelu-tanh", "neox-silu", "neox-relu", "gpt2-gelu-new"]
GATED_MLPS = ["llama-silu", "gemma3-gelu-tanh", "phi3-fused"]
ALL_MLPS = PLAIN_MLPS + GATED_MLPS
