"""The butterfly's tiled forward against its factor-by-factor reference: same outputs and same
gradients, whether the blocks are widened into larger tiles or not."""

from __future__ import annotations

import pytest
import torch

from hupeft.methods.boft.butterfly import APPLY_WIDTH, Butterfly


@pytest.mark.parametrize("dim,b,m", [(24, 8, 1), (48, 8, 2), (64, 4, 1), (64, 8, 3), (96, 2, 3), (576, 8, 1),
                                     (576, 8, 3)])
def test_tiled_forward_and_gradients_match_the_factor_by_factor_reference(dim, b, m):
    bf = Butterfly(dim, b, m)
    g = torch.Generator().manual_seed(dim + m)
    with torch.no_grad():
        bf.theta.copy_(torch.randn(bf.theta.shape, generator=g) * 0.3)
    x = torch.randn(2, 5, dim, generator=g)
    w = torch.randn(2, 5, dim, generator=g)

    def run(fn):
        bf.theta.grad = None
        xx = x.clone().requires_grad_(True)
        y = fn(xx)
        (y * w).sum().backward()
        return y.detach(), xx.grad, bf.theta.grad.clone()

    tiled = run(bf)
    reference = run(lambda xx: bf._factors(xx, bf.block_matrices()))
    for a, r in zip(tiled, reference):
        assert (a - r).abs().max().item() <= 1e-5
    assert (tiled[0] - x).abs().max().item() > 1e-2, "the rotation did nothing"
    widened = dim % max(bf.group, APPLY_WIDTH) == 0
    assert bf.width == (max(bf.group, APPLY_WIDTH) if widened else bf.group)
