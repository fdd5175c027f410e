"""Suite-wide fixtures.

Every test runs with one intra-op CPU thread: the tensors here are tiny, and extra threads
only add contention on shared 2-core machines (CI included).
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
