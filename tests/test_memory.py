"""hupeft.memory's exact tensor count: what is alive at the start, plus the highest net
allocation during the work, with shared storages counted once."""

from __future__ import annotations

import torch

from hupeft.memory import TensorPeak, live_tensor_bytes


def test_live_tensor_bytes_counts_a_storage_once_whatever_its_views():
    before = live_tensor_bytes()
    x = torch.zeros(1000)
    views = [x[:10], x.view(10, 100), x[500:]]
    assert live_tensor_bytes() - before == 4000
    del x, views
    assert live_tensor_bytes() == before


def test_tensor_peak_is_the_most_alive_at_once_not_the_sum_of_allocations():
    keep = torch.zeros(1000)
    with TensorPeak() as m:
        a = torch.zeros(250_000)  # 1 MB
        b = torch.zeros(500_000)  # 2 MB: 3 MB alive at once
        del a, b
        c = torch.zeros(625_000)  # 2.5 MB, after the others were freed
        del c
    assert m.start >= keep.numel() * 4
    assert m.peak - m.start == 3_000_000


def test_tensor_peak_sees_what_backward_holds():
    w = torch.randn(256, 256, requires_grad=True)
    with TensorPeak() as m:
        x = torch.randn(1024, 256)
        (x @ w).relu().sum().backward()
    # x (1 MB), the product and its relu (1 MB each) and w's gradient (256 KiB) at least
    assert m.peak - m.start >= 3 * 1024 * 256 * 4
