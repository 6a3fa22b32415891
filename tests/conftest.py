"""Shared fixtures: torch on one thread, and the digits data loaded once per session.

One thread because the suite runs on 2 cores, where torch's default of one thread per core makes
small models slower: measured on this machine, the two Sybil simulation tests of
tests/test_attacks.py take 17.6 s with torch's default and 3.6 s with one thread."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import digits_data

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits with the project's fixed split, loaded once per session."""
    return digits_data()
