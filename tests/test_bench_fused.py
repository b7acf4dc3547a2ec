"""The fused layers of benchmarks/fused.py compute what flowforge's eager layers compute."""

import importlib
import shutil

import pytest
import torch

import flowforge as ff

from tolerances import made_operations, mlp_operations, rounding_bound

fused = importlib.import_module("benchmarks.fused")


def test_fused_made_has_the_eager_loss_and_gradients():
    # check_equal is relative to the largest gradient entry and to the loss; the chain is the
    # five MADEs forward and back, and the batch mean of 512 terms (tolerances.py)
    operations = 2 * 5 * made_operations(64, (256, 256)) + 512
    assert fused.check_equal("C") < rounding_bound(torch.float64, operations)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") and shutil.which("ninja")), reason="no compiler")
def test_fused_coupling_has_the_eager_loss_and_gradients():
    # compiles the C++ coupling (about a minute on two cores); eight couplings of 2x64
    operations = 2 * 8 * (mlp_operations(1, 64, 64) + 8) + 512
    assert fused.check_equal("A") < rounding_bound(torch.float64, operations)


def test_fused_made_trains():
    subject = fused.fused_subject("C")
    optimizer = torch.optim.Adam(subject.module.parameters(), lr=1e-2)
    x = torch.randn(64, 64)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = subject.loss(x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # the masked-out weights get no gradient
    made = next(m for m in subject.module.modules() if isinstance(m, ff.made.MADE))
    assert torch.all(made.output.weight.grad[made.output.mask == 0] == 0)


def test_fusing_refuses_what_it_does_not_cover():
    with pytest.raises(ValueError, match="no MADE"):
        fused.fuse_mades(ff.models.realnvp(4))
    with pytest.raises(ValueError, match="no affine coupling"):
        fused.fuse_couplings(ff.models.maf(4))
    with pytest.raises(ValueError, match="residual"):
        fused.fuse_mades(ff.models.maf(4, residual=True))
    with pytest.raises(ValueError, match="ReLU"):
        fused.fuse_couplings(ff.models.realnvp(4, activation="tanh"))
