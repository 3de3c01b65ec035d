"""Shared test fixtures: tiny real Hugging Face MLP modules built from configs (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from builders import ALL_MLPS, build_hf_mlp  # noqa: E402


@pytest.fixture(params=ALL_MLPS)
def hf_mlp(request) -> torch.nn.Module:
    return build_hf_mlp(request.param)
