"""One torch thread per test: this suite shares a small CPU with other work.

With two or more intra-op threads on a busy two-core machine, OpenMP workers wait on
each other and a step can take 10-40 times longer; one thread is fast and predictable.
The previous setting is restored after each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
