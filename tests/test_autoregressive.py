"""MADE's autoregressive property, and the MAF / IAF / NSF models built on it."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge.nn.made import MADE, input_degrees

from cases import randomize
from tolerances import inf_norm_of_jacobian, made_operations, rounding_bound

ORDERS = ["natural", "reverse", "random", [2, 0, 4, 1, 3]]


def made_jacobian(made: MADE, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """d(outputs of feature i) / d x_j as ``(D, P, D)`` at one input row."""

    def outputs(v):
        h = v[None] if context is None else torch.cat((v[None], context[None]), -1)
        return made(h)[0]

    return torch.autograd.functional.jacobian(outputs, x)


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_made_jacobian_is_strictly_triangular_under_its_ordering(order, residual, context_dim):
    torch.manual_seed(0)
    features = 5
    made = MADE(features, 3, (12, 12, 12), context_dim, order, residual, "tanh", seed=7)
    made = randomize(made.double())
    degrees = input_degrees(features, order, seed=7)
    allowed = degrees[:, None] > degrees[None, :]  # output i may depend on input j
    for _ in range(3):
        x = torch.randn(features, dtype=torch.float64)
        context = torch.randn(context_dim, dtype=torch.float64) if context_dim else None
        dependence = made_jacobian(made, x, context).abs().amax(1) > 0
        assert not (dependence & ~allowed).any(), "an output depends on a later input"
        # Every permitted dependence is realised: the masks are not merely empty.
        assert torch.equal(dependence, allowed)


def test_made_with_one_feature_depends_only_on_the_context():
    made = randomize(MADE(1, 2, (8,), context_dim=3)).double()
    x = torch.randn(4, 1, dtype=torch.float64)
    c = torch.randn(4, 3, dtype=torch.float64)
    out = made(torch.cat((x, c), -1))
    assert torch.equal(out, made(torch.cat((x + 1, c), -1)))
    assert not torch.equal(out, made(torch.cat((x, c + 1), -1)))


def test_made_rejects_bad_orders_and_residual_widths():
    with pytest.raises(ValueError, match=r"order must be a permutation of 0\.\.3"):
        MADE(4, 2, order=[0, 1, 1, 3])
    with pytest.raises(ValueError, match="unknown order 'sideways'"):
        MADE(4, 2, order="sideways")
    with pytest.raises(ValueError, match="residual MADE needs equal hidden widths"):
        MADE(4, 2, hidden=(16, 32), residual=True)


def test_maf_layer_starts_as_the_identity():
    layer = ff.transforms.AffineAutoregressive(4)
    x = torch.randn(6, 4)
    z, logdet = layer(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(6))


MODELS = {
    "maf": dict(dim=4, layers=3, hidden=(16, 16)),
    "maf-residual-random": dict(dim=4, hidden=(16, 16), residual=True, permutation="random"),
    "iaf": dict(dim=4, layers=3, hidden=(16, 16)),
    "nsf": dict(dim=4, layers=3, hidden=(16, 16), tail_bound=2.0),
    "nsf-autoregressive": dict(dim=4, layers=2, hidden=(16, 16), autoregressive=True),
}


def build(key: str, **extra) -> ff.Flow:
    name = key.split("-")[0]
    flow = ff.models.MODELS[name](**MODELS[key], **extra).double()
    return randomize(flow, seed=1, scale=0.3)


@pytest.mark.parametrize("key", MODELS)
def test_sample_and_log_prob_agrees_with_log_prob(key):
    torch.manual_seed(0)
    flow = build(key)
    x, log_q = flow.sample_and_log_prob(200)
    assert x.shape == (200, 4) and torch.isfinite(log_q).all()
    torch.testing.assert_close(log_q, flow.log_prob(x), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("base", ["normal", "conditional-normal"])
def test_conditional_sample_and_log_prob_agrees_with_log_prob(key, base):
    torch.manual_seed(0)
    flow = build(key, context_dim=3, embedding_dim=5, base=base)
    context = torch.randn(7, 3, dtype=torch.float64)
    x, log_q = flow.sample_and_log_prob(10, context=context)
    assert x.shape == (10, 7, 4) and log_q.shape == (10, 7)  # (*sample_shape, *contexts, D)
    repeated = context.expand(10, 7, 3)
    torch.testing.assert_close(flow.log_prob(x, context=context), flow.log_prob(x, repeated))
    # rtol 1e-7: a few draws land where the random residual MADEs are ill-conditioned.
    torch.testing.assert_close(log_q, flow.log_prob(x, context=repeated), atol=1e-8, rtol=1e-7)
    # Different contexts, different densities of the same points.
    assert not torch.allclose(flow.log_prob(x, context=repeated), flow.log_prob(x, repeated + 1))


def count_made_passes(flow: ff.Flow, call) -> int:
    calls = []
    for module in flow.modules():
        if isinstance(module, MADE):
            module.register_forward_hook(lambda *_: calls.append(1))
    call()
    return len(calls)


def test_maf_and_iaf_trade_density_and_sampling_passes():
    """MAF: density in one pass per layer, sampling with gradients in dim; IAF the reverse.
    Sampling without gradients runs no full pass at all (MADE.autoregress)."""
    dim, layers = 4, 3
    maf = ff.models.maf(dim, layers)
    iaf = ff.models.iaf(dim, layers)
    x = torch.randn(8, dim)
    assert count_made_passes(maf, lambda: maf.log_prob(x)) == layers
    with torch.enable_grad():  # the D-pass inverse; without gradients it is one pass
        assert count_made_passes(maf, lambda: maf.sample_and_log_prob(8)) == layers * dim
    assert count_made_passes(iaf, lambda: iaf.sample_and_log_prob(8)) == layers
    assert count_made_passes(iaf, lambda: iaf.log_prob(x)) == layers * dim
    assert count_made_passes(maf, lambda: maf.sample(8)) == 0


def test_builders_reject_bad_conditional_options():
    with pytest.raises(ValueError, match="embedding_dim needs a context"):
        ff.models.maf(3, embedding_dim=4)
    with pytest.raises(ValueError, match="conditional base needs a context width"):
        ff.models.nsf(3, base="conditional-normal")
    with pytest.raises(ValueError, match="unknown permutation 'shuffle'"):
        ff.models.iaf(3, permutation="shuffle")
    with pytest.raises(ValueError, match="dim must be an integer >= 2"):
        ff.models.nsf(1)  # a coupling needs two parts; autoregressive=True takes dim 1
    assert ff.models.nsf(1, autoregressive=True).log_prob(torch.randn(3, 1)).shape == (3,)


@pytest.mark.parametrize("layer", ["affine", "spline"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"order": "random", "seed": 3},
        {"residual": True},
        {"context_dim": 2},
        {"activation": "tanh"},
        {"activation": "elu", "residual": True},
    ],
    ids=["natural", "random", "residual", "conditional", "tanh", "elu-residual"],
)
@pytest.mark.parametrize("dim", [1, 2, 7])
@pytest.mark.parametrize("batch", [9, 256, 517])
def test_one_pass_inverse_equals_the_d_pass_inverse(layer, options, dim, batch):
    """Without gradients the inverse takes MADE.autoregress (each hidden unit once); it must
    give what the D full passes give, log-determinant included, at small and large batches."""
    cls = ff.transforms.AffineAutoregressive
    extra = {}
    if layer == "spline":
        cls, extra = ff.transforms.SplineAutoregressive, {"bins": 5, "tail_bound": 2.0}
    transform = randomize(cls(dim, hidden=(16, 16), **options, **extra), seed=dim).double()
    z = torch.randn(batch, dim, dtype=torch.float64)
    context = torch.randn(batch, 2, dtype=torch.float64) if options.get("context_dim") else None
    x_passes, logdet_passes = transform.inverse(z, context)
    with torch.no_grad():
        x_one, logdet_one = transform.inverse(z, context)
    # Both are the same exact map; they differ by rounding along a chain of `dim` passes, each
    # through the MADE and the elementwise map (a spline: softmaxes, cumulative sums and a
    # quadratic root over its bins), carried by the Jacobian of the inverse (tolerances.py).
    per_pass = made_operations(dim, (16, 16), options.get("context_dim", 0))
    per_pass += 4 * extra.get("bins", 0) + 30
    growth = max(
        inf_norm_of_jacobian(lambda v: transform.inverse(v, context)[0], z),
        inf_norm_of_jacobian(lambda v: transform.inverse(v, context)[1][:, None], z),
    )
    bound = rounding_bound(torch.float64, dim * per_pass, growth)
    for one, passes in ((x_one, x_passes), (logdet_one, logdet_passes)):
        scale = 1 + passes.abs().max().item()
        torch.testing.assert_close(one, passes.detach(), atol=bound * scale, rtol=0)
        assert bound * scale < 1e-5  # far below the errors of order one that a bug makes
    z_back, _ = transform(x_one, context)
    torch.testing.assert_close(z_back, z, atol=1e-10, rtol=1e-10)


def test_conditional_made_feeds_the_context_to_every_output():
    """Hidden units of degree 0 see only the context, so even the first feature's parameters
    depend on it."""
    made = randomize(MADE(3, 2, (12, 12), context_dim=2, activation="tanh")).double()
    x = torch.randn(3, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(
        lambda c: made(torch.cat((x, c))[None])[0], torch.randn(2, dtype=torch.float64)
    )
    assert (jacobian.abs().amax((1, 2)) > 0).all()


def test_autoregress_checks_the_context():
    made = MADE(3, 2, (8, 8), context_dim=2)
    with pytest.raises(ValueError, match="context of width 2, got none"):
        made.autoregress(None, lambda i, params, out: out.zero_(), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="context of width 0"):
        MADE(3, 2, (8, 8)).autoregress(torch.zeros(4, 2), lambda *_: None, torch.zeros(4, 3))
