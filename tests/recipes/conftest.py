"""Recipe tests: small torch thread pool (CI boxes have 2 cores shared with other jobs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_globals() -> Iterator[None]:
    """Run recipes on one intra-op thread; put back the process-wide torch flags they change."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
