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

    neox = lambda act: GPTNeoXMLP(
        GPTNeoXConfig(hidden_size=D, intermediate_size=H, hidden_act=act, num_attention_heads=2)
    )  # noqa: E731
    builders = {
        "neox-gelu": lambda: neox("gelu"),
        "neox-gelu-tanh": lambda: neox("gelu_pytorch_tanh"),
        "neox-silu": lambda: neox("silu"),
        "neox-relu": lambda: neox("relu"),
        "gpt2-gelu-new": lambda: GPT2MLP(H, GPT2Config(n_embd=D, n_head=2)),
        "llama-silu": lambda: LlamaMLP(
            LlamaConfig(hidden_size=D, intermediate_size=H, num_attention_heads=2, mlp_bias=True)
        ),
        "gemma3-gelu-tanh": lambda: Gemma3MLP(
            Gemma3TextConfig(hidden_size=D, intermediate_size=H, num_attention_heads=2, head_dim=6)
        ),
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


def build_tiny_saved_lm(root, *, validation_fraction: float) -> None:
    """A corpus of random words (``root/corpus``) and a tiny GPT-NeoX with its BPE tokenizer saved
    with ``save_pretrained`` (``root/model``): the real loading path, with no downloads."""
    from transformers import GPTNeoXForCausalLM

    from jsae.data.corpus import build_corpus
    from jsae.data.pretrain import PretrainConfig, tiny_neox_config, train_tokenizer

    words = "the of and to in is was that for on with as by at from light water earth day night said king".split()
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        idx = torch.randint(0, len(words), (300,), generator=g).tolist()
        (root / f"doc{i}.txt").write_text(" ".join(words[j] for j in idx) + ".\n")
    build_corpus(
        root / "corpus", source="files", globs=[str(root / "doc*.txt")], validation_fraction=validation_fraction
    )
    tokenizer = train_tokenizer(root / "corpus", vocab_size=300)
    torch.manual_seed(0)
    cfg = PretrainConfig(hidden=16, layers=2, heads=2, vocab_size=300, context_length=16)
    model = GPTNeoXForCausalLM(tiny_neox_config(cfg, tokenizer)).eval()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
