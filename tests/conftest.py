"""Shared fixtures and the hypothesis profile (CI runs fewer, deterministic examples)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# A long run by hand after changing a fast path: PRUNEKIT_HYPOTHESIS=stress pytest tests/...
settings.register_profile(
    "stress", max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(
    os.environ.get("PRUNEKIT_HYPOTHESIS") or ("ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class SmallCNN(nn.Module):
    """A real little CNN: conv, conv, linear (the shapes users hit: 3 input channels,
    an output layer of 10 that 4x1 does not divide)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


@pytest.fixture
def cnn() -> SmallCNN:
    return SmallCNN()


@pytest.fixture
def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def prunable(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    }


def magnitude_scores(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().abs() for name, m in modules.items()}
