"""Shared fixtures: torch on one thread (the suite runs on 2 cores; measured: about 245 s ->
175 s for the whole suite, one Sybil test 12.7 s -> 0.5 s), and the digits data loaded once."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import digits_data

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits with the project's fixed split, loaded once per session."""
    return digits_data()
