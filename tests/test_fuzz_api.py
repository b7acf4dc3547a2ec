"""A fuzzer over the public Flow methods: whatever it is given, a call either returns tensors
of the documented shapes or raises a ValueError or TypeError with a one-line message.

Hypothesis draws the model, the method (``log_prob``, ``forward``, ``sample``, ``rsample``,
``sample_and_log_prob``, and the raw ``transform`` and ``transform.inverse``), sample shapes
(ints, negative ones included, floats, bools, tuples, lists, strings, None), inputs (random
shapes, dtypes, NaN, infinite and huge values, empty batches, non-tensors), contexts (none,
right, of the wrong width, rows, rank or dtype, NaN, a numpy array) and ``validate_args``.

The default profile runs ``FACTOR`` times its ``max_examples`` per test (a few seconds);
``HYPOTHESIS_PROFILE=thorough`` ten times more. ``pytest -s`` prints the count of calls.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowforge as ff

FACTOR = 40
EXAMPLES = FACTOR * settings().max_examples  # the loaded profile's count, scaled
SMALL = dict(layers=2, hidden=(8,))
IMAGE = (1, 4, 4)

torch.manual_seed(0)
PROTOTYPES = {
    "realnvp": ff.models.realnvp(3, **SMALL),
    "maf": ff.models.maf(3, **SMALL),
    "nsf": ff.models.nsf(3, **SMALL),
    "nsf-autoregressive": ff.models.nsf(3, autoregressive=True, **SMALL),
    "nice": ff.models.nice(3, **SMALL),
    "maf-actnorm": ff.models.maf(3, actnorm=True, **SMALL),
    "realnvp-actnorm-float64": ff.models.realnvp(3, actnorm=True, **SMALL).double(),
    "iaf": ff.models.iaf(3, **SMALL),
    "planar": ff.models.planar(3, layers=2),
    "maf-conditional": ff.models.maf(3, context_dim=2, **SMALL),
    "realnvp-conditional-embedded": ff.models.realnvp(
        3, context_dim=2, embedding_dim=4, base="conditional-normal", **SMALL
    ),
    "glow": ff.models.glow(IMAGE, levels=2, steps=1, channels=8),
    "realnvp_image": ff.models.realnvp_image(IMAGE, scales=2, blocks=0, channels=8),
    "glow-conditional": ff.models.glow(IMAGE, levels=1, steps=1, channels=8, context_dim=2),
}
METHODS = ["log_prob", "forward", "sample", "rsample", "sample_and_log_prob"]
RAW = ["transform", "transform.inverse"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]
SPECIAL = [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e300, 0.0, -3.0, 7.0]
CONTEXTS = ["none", "right", "width", "rows", "rank-1", "rank-3", "dtype", "nan", "numpy"]

OUTCOMES: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report():
    start = time.perf_counter()
    yield
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(OUTCOMES.items()))
    seconds = time.perf_counter() - start
    print(f"\nfuzz: {sum(OUTCOMES.values())} calls ({counts}) in {seconds:.1f} s")


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four, else ``bad``."""
    return st.integers(0, 3).flatmap(lambda i: good if i else bad)


counts = st.integers(0, 4)
negative = st.integers(-3, -1)
sample_shapes = mostly(
    st.one_of(
        counts,
        st.just(()),
        st.tuples(counts, counts),
        st.lists(counts, max_size=3),
        st.builds(torch.Size, st.lists(counts, max_size=2)),
        counts.map(np.int64),
    ),
    st.one_of(
        negative,
        st.tuples(counts, negative),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=3),
        st.none(),
        st.lists(
            st.one_of(counts, st.floats(-2, 3), st.booleans(), st.text(max_size=1)), max_size=2
        ),
    ),
)
temperatures = st.one_of(
    st.just(1.0), st.floats(-1, 3), st.sampled_from([0, math.inf, math.nan, True, "1", None])
)


@st.composite
def tensors(draw, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Values in (0.05, 0.95) (inside the image models' domain), a few of them special."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = torch.rand(shape, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    flat = values.view(-1)
    if flat.numel():
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIAL))
    if dtype.is_floating_point:
        return values.to(dtype)
    return values.nan_to_num(0.0, 0.0, 0.0).round().to(dtype)


@st.composite
def data(draw, flow: ff.Flow) -> object:
    """An input for ``log_prob``: mostly a tensor, of the flow's event shape or another."""
    batch = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    shapes = st.lists(st.integers(0, 5), max_size=4).map(tuple)
    event = draw(mostly(st.just(tuple(flow.event_shape)), shapes))
    dtype = draw(mostly(st.just(flow.dtype), st.sampled_from(DTYPES)))
    x = draw(tensors((*batch, *event), dtype))
    kind = draw(mostly(st.just("tensor"), st.sampled_from(["list", "numpy", "none", "number"])))
    if kind == "numpy":
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return {"tensor": x, "list": x.tolist(), "none": None, "number": 0.5}[kind]


def batch_shape(flow: ff.Flow, x: object) -> tuple[int, ...] | None:
    """``x``'s batch shape for this flow, None where ``x`` is no tensor that ends in the
    flow's event shape."""
    k = len(flow.event_shape)
    if not isinstance(x, torch.Tensor) or x.dim() < k or x.shape[x.dim() - k :] != flow.event_shape:
        return None
    return tuple(x.shape[: x.dim() - k])


@st.composite
def contexts(draw, flow: ff.Flow, rows: tuple[int, ...]) -> object:
    """A context for ``rows`` (right, or wrong in one way) or None."""
    k = (flow.config or {}).get("context_dim")
    kind = draw(mostly(st.just("right" if k else "none"), st.sampled_from(CONTEXTS)))
    k = k or 2  # a plausible width for an unconditional flow
    if kind == "none":
        return None
    shape = {
        "width": (*rows, k + draw(st.integers(1, 3))),
        "rows": (*rows[:-1], (rows[-1] if rows else 0) + 1, k),
        "rank-1": (k,),
        "rank-3": (*rows, 1, k),
    }.get(kind, (*rows, k))
    dtype = draw(st.sampled_from(DTYPES)) if kind == "dtype" else flow.dtype
    context = draw(tensors(shape, dtype)) - 0.5 if dtype.is_floating_point else torch.ones(shape)
    if kind == "nan" and context.numel():
        context.view(-1)[0] = math.nan
    return context.numpy() if kind == "numpy" else context


def call(method: str, flow: ff.Flow, *args: object, **kwargs: object) -> object:
    """The call's result; a ValueError or TypeError of one line counts as a refusal (None)."""
    function = flow.transform.inverse if method == "transform.inverse" else None
    function = function or (flow.transform if method == "transform" else getattr(flow, method))
    try:
        result = function(*args, **kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        assert message and "\n" not in message, f"{type(error).__name__}: {message!r}"
        OUTCOMES[type(error).__name__] += 1
        return None
    OUTCOMES["returned"] += 1
    return result


@settings(max_examples=EXAMPLES)
@given(
    name=st.sampled_from(sorted(PROTOTYPES)),
    method=st.sampled_from(METHODS),
    validate=st.booleans(),
    draw=st.data(),
)
def test_public_methods_refuse_or_return_documented_shapes(name, method, validate, draw):
    flow = copy.deepcopy(PROTOTYPES[name])
    flow.validate_args = validate
    event = tuple(flow.event_shape)
    if method in ("log_prob", "forward"):
        x = draw.draw(data(flow), label="x")
        batch = batch_shape(flow, x)
        rows = batch if batch is not None else (draw.draw(st.integers(0, 3)),)
        context = draw.draw(contexts(flow, rows), label="context")
        log_p = call(method, flow, x, context)
        if log_p is not None:  # the batch shapes of x and the context broadcast
            rows = () if context is None else tuple(context.shape[:-1])
            assert log_p.shape == torch.broadcast_shapes(batch, rows)
            assert log_p.dtype == flow.dtype
        return
    shape = draw.draw(sample_shapes, label="sample_shape")
    m = draw.draw(st.integers(0, 3), label="context rows")
    context = draw.draw(contexts(flow, (m,)), label="context")
    kwargs = {"temperature": draw.draw(temperatures)} if method == "sample" else {}
    result = call(method, flow, shape, context, **kwargs)
    if result is None:
        return
    rows = () if context is None else tuple(context.shape[:-1])  # (..., k): one per context
    expected = (*_sizes(shape), *rows)
    if method == "sample_and_log_prob":
        x, log_q = result
        assert x.shape == (*expected, *event) and log_q.shape == expected
    else:
        assert result.shape == (*expected, *event)


def _sizes(sample_shape: object) -> tuple[int, ...]:
    """A sample shape that was accepted, as a tuple."""
    if isinstance(sample_shape, int | np.integer):
        return (int(sample_shape),)
    return tuple(sample_shape)


@settings(max_examples=EXAMPLES)
@given(name=st.sampled_from(sorted(PROTOTYPES)), method=st.sampled_from(RAW), draw=st.data())
def test_the_raw_transform_refuses_or_returns_documented_shapes(name, method, draw):
    flow = copy.deepcopy(PROTOTYPES[name])
    x = draw.draw(data(flow), label="x")
    batch = batch_shape(flow, x)
    rows = batch[:1] if batch else (draw.draw(st.integers(0, 3)),)
    context = draw.draw(contexts(flow, rows), label="context")
    # The transform sees the embedded context: embed one that the embedding accepts.
    embeddable = isinstance(context, torch.Tensor) and context.dim() == 2
    if flow.embedding is not None and embeddable and context.shape[1] == 2:
        context = flow.embedding(context.to(flow.dtype))
    result = call(method, flow, x, context)
    if result is not None:
        out, logdet = result
        assert out.shape == x.shape and logdet.shape == x.shape[:1]
