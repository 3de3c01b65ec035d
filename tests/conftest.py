"""Shared test fixtures: tiny real Hugging Face MLP modules built from configs (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Test tensors are tiny: one intra-op thread is as fast on an idle machine and several times faster
# on a shared one (OpenMP threads waiting on each other).
torch.set_num_threads(1)

from builders import ALL_MLPS, build_hf_mlp  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep every test at one thread, even if the code under test changed it."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(params=ALL_MLPS)
def hf_mlp(request) -> torch.nn.Module:
    return build_hf_mlp(request.param)
