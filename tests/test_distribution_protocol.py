"""The torch.distributions conventions of a flow: condition, expand, the sample-major layout,
broadcasting contexts, the one-pass method's name, and what has no closed form."""

from __future__ import annotations

import warnings

import pytest
import torch

import flowforge as ff


def conditional() -> ff.Flow:
    torch.manual_seed(0)
    flow = ff.models.maf(dim=2, layers=2, hidden=(8,), context_dim=3).double()
    with torch.no_grad():  # away from the identity start, so that the context matters
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return flow


def test_condition_is_a_distribution_over_the_contexts_batch():
    flow = conditional()
    c = torch.randn(4, 3, dtype=torch.float64)
    q = flow.condition(c)
    assert isinstance(q, torch.distributions.Distribution)
    assert q.batch_shape == (4,) and q.event_shape == (2,)
    x, log_q = q.rsample_and_log_prob((6,))
    assert x.shape == (6, 4, 2) and log_q.shape == (6, 4)
    torch.testing.assert_close(q.log_prob(x), log_q)  # its own draws, scored the slow way
    torch.testing.assert_close(q.log_prob(x), flow.log_prob(x, c))
    # each column of draws belongs to its own context: scored under another, they differ
    assert not torch.allclose(flow.log_prob(x, c.roll(1, 0)), log_q)
    assert q.sample().shape == (4, 2) and not q.sample().requires_grad
    assert q.expand((5, 4)).sample((2,)).shape == (2, 5, 4, 2)
    with pytest.raises(ValueError, match="cannot expand contexts of batch shape"):
        q.expand((3,))


def test_a_one_dimensional_context_is_one_context():
    flow = conditional()
    c = torch.randn(3, dtype=torch.float64)
    assert flow.sample(5, context=c).shape == (5, 2)
    assert flow.condition(c).batch_shape == ()
    x = torch.randn(7, 2, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x, c), flow.log_prob(x, c.expand(7, 3)))


def test_sampling_is_sample_major_and_matches_the_context_rows():
    """Draw j of context i sits at [j, i]: with T = 0 every draw is the image of its own
    context's base mode, so the rows of a (n, m, D) result repeat."""
    flow = ff.models.nsf(2, layers=2, hidden=(8,), context_dim=3, base="conditional-normal")
    c = torch.randn(3, 3)
    modes = flow.sample(4, context=c, temperature=0.0)
    assert modes.shape == (4, 3, 2)
    torch.testing.assert_close(modes, modes[:1].expand(4, 3, 2))
    one_by_one = torch.stack([flow.sample(1, context=c[i], temperature=0.0)[0] for i in range(3)])
    torch.testing.assert_close(modes[0], one_by_one)


def test_expand_gives_an_unconditional_flow_batch_dimensions():
    flow = ff.models.realnvp(dim=2, layers=2, hidden=(8,))
    batched = flow.expand((3,))
    assert batched.batch_shape == (3,) and batched.sample((5,)).shape == (5, 3, 2)
    x = torch.randn(5, 3, 2)
    torch.testing.assert_close(batched.log_prob(x), flow.log_prob(x))
    assert batched.log_prob(torch.randn(2)).shape == (3,)
    with pytest.raises(ValueError, match=r"flow.condition\(c\).expand"):
        conditional().expand((3,))
    with pytest.raises(ValueError, match="not conditional"):
        flow.condition(torch.randn(2, 3))


def test_rsample_and_log_prob_is_the_canonical_one_pass_method():
    flow = ff.models.iaf(dim=2, layers=2, hidden=(8,))
    assert ff.Flow.sample_and_log_prob is ff.Flow.rsample_and_log_prob
    x, log_q = flow.rsample_and_log_prob(10)
    assert log_q.requires_grad and x.shape == (10, 2)


@pytest.mark.parametrize("name", ["mean", "variance"])
def test_moments_without_closed_form_say_how_to_estimate_them(name):
    flow = ff.models.realnvp(dim=2, layers=2, hidden=(8,))
    with pytest.raises(NotImplementedError, match=r"estimate it by flow.sample\(n\)"):
        getattr(flow, name)
    with pytest.raises(NotImplementedError, match=r"estimate it by -flow\.log_prob"):
        flow.entropy()


def test_the_finite_check_is_skipped_while_tracing():
    """The NaN check is data-dependent: under torch.jit.trace (Pyro's JitTrace_ELBO) it is
    skipped instead of warning that the trace may be wrong; outside a trace it still runs."""
    from flowforge.flows.flow import _check_finite

    def checked(t: torch.Tensor) -> torch.Tensor:
        _check_finite(t, "x")
        return 2 * t

    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(checked, (torch.randn(4, 2),), check_trace=False)
    assert torch.isnan(traced(torch.full((4, 2), float("nan")))).all()
    with pytest.raises(ValueError, match="x contains 8 NaN"):
        checked(torch.full((4, 2), float("nan")))
