"""Shared fixtures: one CPU thread in these tests; the offline MiniLM text conditioner is
loaded once per session."""

import pytest
import torch


@pytest.fixture(scope="session")
def minilm():
    """A TextConditioner on the bundled all-MiniLM-L6-v2 (learned null)."""
    from conditioners.text import TextConditioner

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return TextConditioner(p_drop=0.1)
    finally:
        torch.set_num_threads(n)
