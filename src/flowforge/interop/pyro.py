r"""A flow as a Pyro distribution: guides for SVI, priors and likelihoods in Pyro models.

`PyroFlow` (made by `Flow.as_pyro`) is a `ConditionedFlow` with Pyro's
``TorchDistributionMixin``: calling it samples (``pyro.sample("z", flow.as_pyro())``), it
expands for plates and vectorised particles, and ``to_event``, ``mask`` and
``score_parts`` are Pyro's. Its ``log_prob`` of the value it has just drawn returns the
log-density computed in the same pass,

$$
z \sim p_z,\quad x = f^{-1}(z),\quad \log q(x) = \log p_z(z) - \log|\det J_{f^{-1}}(z)|,
$$

so that Pyro's ELBO, which draws a guide's value and then scores it, keeps the one-pass cost of
`Flow.rsample_and_log_prob` (an IAF guide never runs its slow direction). Any other value
is scored by `Flow.log_prob`.

Examples:
    >>> import pyro, pyro.distributions as dist, torch, flowforge as ff
    >>> flow = ff.models.iaf(dim=2)
    >>> def guide():
    ...     pyro.module("flow", flow)
    ...     return pyro.sample("z", flow.as_pyro())
    >>> guide().shape
    torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from flowforge.runtime.extras import MissingExtraError

try:
    from pyro.distributions.torch_distribution import TorchDistributionMixin
except ImportError as error:  # pragma: no cover - the message is the point
    raise MissingExtraError(__name__, "pyro") from error

from flowforge.flows.flow import ConditionedFlow, Flow


class PyroFlow(ConditionedFlow, TorchDistributionMixin):
    r"""$q(\cdot)$ or $q(\cdot \mid c)$ of a `Flow` as a Pyro distribution.

    ``batch_shape`` is the context's batch shape ``c.shape[:-1]`` (``()`` without a context),
    then whatever Pyro's plates expand it to; ``event_shape`` is the flow's. The value of the
    last ``rsample``/``sample``/call is remembered with its log-density, and ``log_prob`` of
    that same tensor returns it without a second pass (the flow is a module: register it with
    ``pyro.module`` so that SVI trains it).

    Args:
        flow: the flow.
        context: ``(*batch, k)`` for a conditional flow (per-datum contexts of an amortized
            guide inside a ``pyro.plate``), None for an unconditional one.
        batch_shape: further batch dimensions, broadcast with the context's.
    """

    def __init__(
        self, flow: Flow, context: Tensor | None = None, batch_shape: Sequence[int] = ()
    ) -> None:
        super().__init__(flow, context, batch_shape)
        self._drawn: tuple[Tensor, Tensor] | None = None

    def rsample_and_log_prob(self, sample_shape: int | Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        x, log_q = super().rsample_and_log_prob(sample_shape)
        self._drawn = (x, log_q)
        return x, log_q

    def log_prob(self, x: Tensor) -> Tensor:
        """``(..., *event_shape) -> (...)``: the cached one-pass log-density if ``x`` is the
        tensor this distribution last drew, else `Flow.log_prob`."""
        if self._drawn is not None and x is self._drawn[0]:
            return self._drawn[1]
        return super().log_prob(x)


def as_pyro(flow: Flow, context: Tensor | None = None) -> PyroFlow:
    """``flow`` as a Pyro distribution, $q(\\cdot)$ or $q(\\cdot \\mid c)$ (`PyroFlow`):
    ``pyro.sample("z", as_pyro(flow))`` draws from it, plates and vectorised particles expand
    it, and the ELBO scores its own draws with the log-density of the same pass.
    ``flow.as_pyro(context)`` is the same.

    Examples:
        >>> import pyro, torch, flowforge as ff
        >>> flow = ff.models.realnvp(dim=2, context_dim=3)
        >>> with pyro.plate("data", 5):
        ...     z = pyro.sample("z", as_pyro(flow, torch.randn(5, 3)))
        >>> z.shape
        torch.Size([5, 2])
    """
    return PyroFlow(flow, flow._check_context(context))
