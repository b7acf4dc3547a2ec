"""The public Flow API refuses bad input with one clear line (a ValueError or TypeError that
says what was given and what is expected), and handles empty batches.

One test per finding of the API audit, each over several model builders: the sample shape,
the context's dtype and shape, empty batches (ActNorm's data initialisation included), bad
input to the raw transform, a context given to an unconditional flow, a conditional flow
called without one, and infinite values in ``log_prob``'s input.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge.transforms import ActNorm

SMALL = dict(layers=2, hidden=(8,))
IMAGE = (1, 4, 4)

BUILDERS = {
    "realnvp": lambda: ff.models.realnvp(3, **SMALL),
    "maf": lambda: ff.models.maf(3, **SMALL),
    "nsf": lambda: ff.models.nsf(3, **SMALL),
    "nice": lambda: ff.models.nice(3, **SMALL),
    "maf-actnorm": lambda: ff.models.maf(3, actnorm=True, **SMALL),
    "maf-conditional": lambda: ff.models.maf(3, context_dim=2, **SMALL),
    "realnvp-conditional-embedded": lambda: ff.models.realnvp(
        3, context_dim=2, embedding_dim=4, base="conditional-normal", **SMALL
    ),
    "glow": lambda: ff.models.glow(IMAGE, levels=2, steps=1, channels=8),
    "realnvp_image": lambda: ff.models.realnvp_image(IMAGE, scales=2, blocks=0, channels=8),
}
CONDITIONAL = [name for name in BUILDERS if "conditional" in name]
UNCONDITIONAL = [name for name in BUILDERS if name not in CONDITIONAL]
VECTORS = [name for name in UNCONDITIONAL if "image" not in name and name != "glow"]
SAMPLERS = ["sample", "rsample", "sample_and_log_prob"]


@pytest.fixture(params=BUILDERS)
def flow(request) -> ff.Flow:
    return BUILDERS[request.param]()


def data(flow: ff.Flow, *batch: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Inputs in (0, 1): in the domain of the image models' Logit too."""
    return torch.rand(*batch, *flow.event_shape, dtype=dtype or flow.dtype) * 0.9 + 0.05


def width(flow: ff.Flow) -> int:
    """The builder's context width (0: unconditional)."""
    return flow.config["context_dim"]


def context(flow: ff.Flow, *rows: int) -> torch.Tensor | None:
    return torch.randn(*rows, width(flow)) if width(flow) else None


def one_line(error: type[Exception], pattern: str, call) -> str:
    """Call, expect ``error`` whose message is one line and matches ``pattern``."""
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {message}"
    assert message and "\n" not in message, message
    assert re.search(pattern, message), message
    return message


# --- the sample count ------------------------------------------------------------------


@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize(
    ("shape", "error", "given"),
    [
        (-1, ValueError, "got -1"),
        ((2, -3), ValueError, r"got \(2, -3\)"),
        (2.5, TypeError, "got 2.5, of type float"),
        (True, TypeError, "got True, of type bool"),
        ("3", TypeError, "got '3', of type str"),
        (None, TypeError, "got None, of type NoneType"),
        ([2, 1.0], TypeError, r"got \[2, 1.0\], whose entry 1.0 is a float"),
        (torch.tensor([2]), TypeError, "got a Tensor of shape"),
    ],
)
def test_a_bad_sample_shape_is_refused(flow, method, shape, error, given):
    ctx = context(flow, 2)
    expected = r"sample_shape must be an int >= 0 or a sequence of them, such as 100 .*"
    one_line(error, expected + given, lambda: getattr(flow, method)(shape, context=ctx))


def test_good_sample_shapes_and_temperatures(flow):
    rows = (2,) if width(flow) else ()
    event = tuple(flow.event_shape)
    for shape, expected in [(3, (3,)), ((2, 3), (2, 3)), (torch.Size([4]), (4,)), ((), ())]:
        assert flow.sample(shape, context(flow, 2)).shape == (*expected, *rows, *event)
    assert flow.sample(np.int64(2), context(flow, 2)).shape == (2, *rows, *event)
    assert flow.sample(2, context(flow, 2), temperature=0).shape == (2, *rows, *event)
    for temperature, error in [(-0.5, ValueError), (float("inf"), ValueError), ("1", TypeError)]:
        one_line(
            error,
            "temperature must be a (finite )?number >= 0",
            lambda t=temperature: flow.sample(2, context(flow, 2), temperature=t),
        )


# --- the context's dtype and shape --------------------------------------------------------


@pytest.mark.parametrize("name", CONDITIONAL)
def test_a_bad_context_is_refused(name):
    flow = BUILDERS[name]()
    x = data(flow, 4)
    good = torch.randn(4, 2)
    cases = [
        (good.long(), TypeError, r"context has dtype torch.int64 .* context.to\(torch.float32\)"),
        (good.double(), TypeError, r"dtype torch.float64 .* convert with context.to\("),
        (good.half(), TypeError, "context has dtype torch.float16 but the flow is torch.float32"),
        (good.numpy(), TypeError, "context must be a torch.Tensor, got ndarray"),
        (torch.randn(4, 5), ValueError, r"shape \(\.\.\., 2\): its last dimension .* \(4, 5\)"),
        (torch.randn(3, 2), ValueError, r"batch shape \(4,\) and context batch shape \(3,\)"),
        (torch.randn(2, 3, 2), ValueError, r"batch shape \(4,\) and context batch shape \(2, 3\)"),
        (torch.randn(3), ValueError, r"shape \(\.\.\., 2\): its last dimension .* \(3,\)"),
        (torch.tensor(1.0), ValueError, r"shape \(\.\.\., 2\): its last dimension .* \(\)"),
        (good.index_fill(0, torch.tensor([1]), float("nan")), ValueError, "context contains 2 NaN"),
    ]
    for ctx, error, pattern in cases:
        one_line(error, pattern, lambda c=ctx: flow.log_prob(x, c))
        one_line(error, pattern, lambda c=ctx: flow(x, c))
    samples = [
        (good.long(), TypeError, r"context.to\(torch.float32\)"),
        (good.numpy(), TypeError, "context must be a torch.Tensor, got ndarray"),
        (torch.randn(4, 5), ValueError, r"context must have shape \(\.\.\., 2\)"),
        (torch.randn(3), ValueError, r"context must have shape \(\.\.\., 2\).* got \(3,\)"),
    ]
    for method in SAMPLERS:
        for ctx, error, pattern in samples:
            one_line(error, pattern, lambda c=ctx, m=method: getattr(flow, m)(3, context=c))
    # Any context batch shape works, and broadcasts against x's as torch's shapes do.
    assert flow.log_prob(data(flow, 2, 3), torch.randn(2, 3, 2)).shape == (2, 3)
    assert flow.log_prob(data(flow, 7, 4), good).shape == (7, 4)  # x (n, m, D), context (m, k)
    assert flow.log_prob(x, torch.randn(2)).shape == (4,)  # one context for every x
    assert flow.log_prob(x, torch.randn(1, 2)).shape == (4,)
    assert flow.log_prob(data(flow, 1), good).shape == (4,)  # one x under every context
    for method in SAMPLERS:  # a 1-D context is one context; any batch of contexts works
        for ctx, shape in [(torch.randn(2), (3,)), (torch.randn(2, 5, 2), (3, 2, 5))]:
            draws = getattr(flow, method)(3, context=ctx)
            draws = draws[0] if isinstance(draws, tuple) else draws
            assert draws.shape == (*shape, *flow.event_shape)


# --- empty batches ------------------------------------------------------------------------


def test_empty_batches(flow):
    event = tuple(flow.event_shape)
    assert flow.log_prob(data(flow, 0), context(flow, 0)).shape == (0,)
    assert flow.log_prob(data(flow, 2, 0), context(flow, 2, 0)).shape == (2, 0)
    if width(flow):
        assert flow.sample(0, context(flow, 2)).shape == (0, 2, *event)
        assert flow.sample(3, context(flow, 0)).shape == (3, 0, *event)
        x, log_q = flow.sample_and_log_prob((0, 2), context(flow, 2))
        assert x.shape == (0, 2, 2, *event) and log_q.shape == (0, 2, 2)
    else:
        assert flow.sample(0).shape == (0, *event)
        assert flow.rsample((2, 0)).shape == (2, 0, *event)
        x, log_q = flow.sample_and_log_prob(0)
        assert x.shape == (0, *event) and log_q.shape == (0,)
    # An empty batch did not initialise ActNorm: the first real batch still does.
    actnorms = [m for m in flow.modules() if isinstance(m, ActNorm)]
    assert not any(bool(m.initialized) for m in actnorms)
    log_p = flow.log_prob(data(flow, 8), context(flow, 8))
    assert torch.isfinite(log_p).all() and all(bool(m.initialized) for m in actnorms)


@pytest.mark.parametrize("event_dims", [1, 3])
def test_actnorm_passes_an_empty_batch_without_initialising(event_dims):
    layer = ActNorm(2, event_dims=event_dims)
    x = torch.empty(0, 2, *(3,) * (event_dims - 1))
    z, logdet = layer(x)
    assert z.shape == x.shape and logdet.shape == (0,) and not layer.initialized
    x_back, logdet = layer.inverse(z)
    assert x_back.shape == x.shape and logdet.shape == (0,)
    layer(torch.randn(5, *x.shape[1:]) * 3 + 1)
    assert layer.initialized and not torch.allclose(layer.log_scale, torch.zeros(()))


# --- the raw transform --------------------------------------------------------------------


def test_the_raw_transform_refuses_bad_input(flow):
    ctx = context(flow, 4)
    if flow.embedding is not None:
        ctx = flow.embedding(ctx)  # the transform sees the embedded context
    x = data(flow, 4)
    event = ", ".join(map(str, flow.event_shape))
    for direction in ("forward", "inverse"):
        call = flow.transform if direction == "forward" else flow.transform.inverse
        where = rf"{type(flow.transform).__name__}\.{direction} expects"
        cases = [
            (x.tolist(), TypeError, f"{where} a torch.Tensor, got list"),
            (x.long(), TypeError, rf"{where} a floating tensor, got dtype torch.int64"),
            (
                torch.tensor(0.5),
                ValueError,
                rf"{where} input of shape \(batch, {event}\), got \(\)",
            ),
            (torch.rand(4, 7), ValueError, rf"input of shape \(batch, {event}\), got \(4, 7\)"),
            (
                x.double(),
                TypeError,
                rf"{where} input of its dtype torch.float32, got torch.float64",
            ),
        ]
        for value, error, pattern in cases:
            one_line(error, pattern, lambda v=value, c=call: c(v, ctx))
        bad_contexts = [
            (np.ones((4, 2)), TypeError, f"{where} a context that is a torch.Tensor"),
            (torch.ones(4, 2).double(), TypeError, r"context of the input's dtype torch.float32"),
            (torch.ones(3, 2), ValueError, rf"{where} a context of shape \(4, k\), one row per"),
        ]
        for value, error, pattern in bad_contexts:
            one_line(error, pattern, lambda v=value, c=call: c(x, v))
        out, logdet = call(x, ctx)  # good input still works
        assert out.shape == x.shape and logdet.shape == (4,)


def test_every_layer_checks_its_input():
    layer = ff.transforms.AffineCoupling(ff.transforms.half_mask(4), hidden=(8,))
    one_line(TypeError, r"AffineCoupling\.inverse expects a torch.Tensor", lambda: layer.inverse(1))
    one_line(
        TypeError,
        r"AffineCoupling\.forward expects a floating",
        lambda: layer(torch.ones(2, 4).long()),
    )


# --- a context for an unconditional flow --------------------------------------------------


@pytest.mark.parametrize("name", UNCONDITIONAL)
def test_a_context_for_an_unconditional_flow_is_refused(name):
    flow = BUILDERS[name]()
    x = data(flow, 4)
    expected = r"this flow is not conditional; got a context of shape \(4, 2\)"
    one_line(ValueError, expected, lambda: flow.log_prob(x, torch.randn(4, 2)))
    one_line(ValueError, expected, lambda: flow(x, torch.randn(4, 2)))
    for method in SAMPLERS:
        one_line(ValueError, expected, lambda m=method: getattr(flow, m)(3, torch.randn(4, 2)))
    array = "this flow is not conditional; got a context of type ndarray"
    one_line(ValueError, array, lambda: flow.log_prob(x, np.ones((4, 2), dtype=np.float32)))


# --- a conditional flow without a context -------------------------------------------------


@pytest.mark.parametrize("name", CONDITIONAL)
def test_a_conditional_flow_without_a_context_says_so(name):
    flow = BUILDERS[name]()
    pattern = r"this flow is conditional: expected a context of shape \(\.\.\., 2\), got none"
    one_line(ValueError, pattern, lambda: flow.log_prob(data(flow, 4)))
    one_line(ValueError, pattern, lambda: flow(data(flow, 2, 3)))
    for method in SAMPLERS:
        one_line(ValueError, pattern, lambda m=method: getattr(flow, m)(3))


def test_a_hand_built_flow_infers_its_context_width():
    """Without a builder's config, the width comes from the layers, base or embedding."""
    built = ff.models.maf(3, context_dim=2, embedding_dim=4, **SMALL)
    flow = ff.Flow(built.transform, built.base, built.embedding)
    assert flow.config is None and flow.context_dim == 2
    one_line(
        ValueError,
        r"shape \(\.\.\., 2\).* got \(4, 4\)",
        lambda: flow.log_prob(data(flow, 4), torch.ones(4, 4)),
    )
    plain = ff.Flow(ff.transforms.ReversePermutation(), ff.StandardNormal(3))
    assert plain.context_dim == 0
    one_line(ValueError, "not conditional", lambda: plain.sample(2, torch.ones(1, 2)))


# --- infinite values ----------------------------------------------------------------------


def test_infinite_and_nan_values_are_refused_unless_validation_is_off(flow):
    ctx = context(flow, 4)
    x = data(flow, 4)
    x.view(4, -1)[0, 0] = float("inf")
    x.view(4, -1)[1, 1] = -float("inf")
    x.view(4, -1)[2, 0] = float("inf")
    expected = "x contains 3 infinite values; expected finite numbers"
    one_line(ValueError, expected, lambda: flow.log_prob(x, ctx))
    x.view(4, -1)[3, 0] = float("nan")
    one_line(ValueError, "x contains 1 NaN and 3 infinite values", lambda: flow.log_prob(x, ctx))
    flow.validate_args = False  # the training loop's setting: no value checks
    if flow.event_shape == IMAGE:
        return  # the image models' Logit refuses values outside [0, 1] itself
    assert flow.log_prob(x, ctx).shape == (4,)
