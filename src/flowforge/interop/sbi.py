r"""flowforge flows as sbi's density estimators, for neural posterior and likelihood
estimation (NPE, NLE and their sequential rounds).

`posterior_nn` and `likelihood_nn` follow sbi's own builders of the same names: each returns a
function ``build(batch_theta, batch_x)`` that sbi calls on the first simulations to fix the
shapes and the z-scoring, and which returns a `FlowEstimator`, sbi's
``ConditionalDensityEstimator`` around a flowforge `Flow`:

$$
\log q(\theta \mid x) = \log q_{\text{flow}}\big((\theta - \mu_\theta)/\sigma_\theta \mid
e((x - \mu_x)/\sigma_x)\big) - \textstyle\sum_i \log \sigma_{\theta,i},
$$

with the standardisation of theta a `flowforge.transforms.Standardize` inside the flow (so
samples come back in theta's units) and that of x in front of the embedding net $e$ (sbi's
``standardizing_net``). For NLE the roles swap: the flow models x given theta.

Examples:
    >>> import torch
    >>> from sbi.inference import NPE
    >>> from flowforge.interop.sbi import posterior_nn
    >>> theta = torch.randn(500, 2)
    >>> x = theta + 0.1 * torch.randn(500, 2)
    >>> npe = NPE(density_estimator=posterior_nn("maf", num_transforms=2))
    >>> estimator = npe.append_simulations(theta, x).train(max_num_epochs=2)
    >>> npe.build_posterior().sample((10,), x=x[0], show_progress_bars=False).shape
    torch.Size([10, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from flowforge.runtime.extras import MissingExtraError

try:
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
    from sbi.utils.sbiutils import standardizing_net
except ImportError as error:  # pragma: no cover - the message is the point
    raise MissingExtraError(__name__, "sbi") from error

from flowforge.flows import models
from flowforge.flows.flow import Flow
from flowforge.transforms import Compose, Standardize

ZScore = Literal["independent", "structured", "none"] | None

# What each model name builds: flowforge's builder and its fixed options.
MODELS: dict[str, tuple[Callable[..., Flow], dict]] = {
    "nsf": (models.nsf, {}),
    "nsf_autoregressive": (models.nsf, {"autoregressive": True}),
    "maf_rqs": (models.nsf, {"autoregressive": True}),
    "maf": (models.maf, {}),
    "realnvp": (models.realnvp, {}),
    "nice": (models.nice, {"base": "normal"}),
    "cnf": (models.cnf, {}),
}


class FlowEstimator(ConditionalDensityEstimator):
    r"""A flowforge `Flow` as sbi's ``ConditionalDensityEstimator`` $q(\text{input} \mid
    \text{condition})$: the flow models the input (theta for NPE, x for NLE) and sees the
    condition through ``embedding_net`` as its context.

    Shapes are sbi's: ``log_prob(input (S, B, *input_shape) or (B, *input_shape), condition
    (B, *condition_shape) or (S, B, *condition_shape)) -> (S, B)``; ``loss(input (B, ...),
    condition (B, ...)) -> (B,)``, the negative log-density; ``sample(sample_shape, condition
    (B, *condition_shape)) -> (*sample_shape, B, *input_shape)``;
    ``sample_and_log_prob`` in one pass (`Flow.rsample_and_log_prob`).

    Args:
        flow: a conditional flow over ``input_shape`` whose context width is the embedding's
            output width.
        embedding_net: ``(N, *condition_shape) -> (N, k)``.
        input_shape: the event shape of the input, ``(d,)``.
        condition_shape: the event shape of the condition.
    """

    def __init__(
        self,
        flow: Flow,
        embedding_net: nn.Module,
        input_shape: Sequence[int],
        condition_shape: Sequence[int],
    ) -> None:
        super().__init__(flow, torch.Size(input_shape), torch.Size(condition_shape))
        self._embedding_net = embedding_net

    @property
    def flow(self) -> Flow:
        """The flowforge flow (``net`` in sbi's terms)."""
        return self.net

    @property
    def embedding_net(self) -> nn.Module:
        return self._embedding_net

    def embed(self, condition: Tensor) -> Tensor:
        """``(*batch, *condition_shape) -> (*batch, k)``, the flow's context."""
        self._check_condition_shape(condition)
        batch = condition.shape[: condition.dim() - len(self.condition_shape)]
        flat = condition.reshape(-1, *self.condition_shape)
        return self._embedding_net(flat).reshape(*batch, -1)

    def log_prob(self, input: Tensor, condition: Tensor, **kwargs) -> Tensor:
        self._check_input_shape(input)
        input, condition, batch = self._broadcast_and_align(input, condition)
        samples = input.shape[0]
        context = self.embed(condition.reshape(samples * batch, *self.condition_shape))
        log_q = self.flow.log_prob(input.reshape(samples * batch, *self.input_shape), context)
        return log_q.reshape(samples, batch)

    def loss(self, input: Tensor, condition: Tensor, **kwargs) -> Tensor:
        return -self.log_prob(input.unsqueeze(0), condition)[0]

    def sample(self, sample_shape: Sequence[int], condition: Tensor, **kwargs) -> Tensor:
        with torch.no_grad():
            return self.flow.sample(tuple(sample_shape), context=self.embed(condition))

    def sample_and_log_prob(
        self, sample_shape: Sequence[int], condition: Tensor, **kwargs
    ) -> tuple[Tensor, Tensor]:
        return self.flow.rsample_and_log_prob(tuple(sample_shape), context=self.embed(condition))


def _check_z_score(name: str, value: object) -> bool | None:
    """``"independent"`` -> False, ``"structured"`` -> True, ``"none"``/None -> None
    (structured or not; None: no z-scoring); a one-line ValueError otherwise."""
    if value is None or value == "none":
        return None
    if value in ("independent", "structured"):
        return value == "structured"
    hint = (
        " (flowforge's estimators do not map bounded supports to unconstrained space: "
        "use z-scoring and sbi's posterior support checks, or transform theta yourself)"
        if value == "transform_to_unconstrained"
        else ""
    )
    raise ValueError(f"{name} must be 'independent', 'structured' or 'none', got {value!r}{hint}")


def _builder(
    model: str,
    z_score_input: ZScore,
    z_score_condition: ZScore,
    hidden_features: int,
    num_transforms: int,
    num_bins: int,
    embedding_net: nn.Module | None,
    options: dict,
) -> Callable[[Tensor, Tensor], FlowEstimator]:
    """``build(batch_input, batch_condition)`` for a model named as in `MODELS`."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}, got {model!r}")
    structured_input = _check_z_score("z-scoring of the input", z_score_input)
    structured_condition = _check_z_score("z-scoring of the condition", z_score_condition)
    builder, fixed = MODELS[model]
    arguments = {"layers": num_transforms, "hidden": (hidden_features, hidden_features)}
    if builder is models.cnf:  # one field, no layers: three hidden layers by default
        arguments = {"hidden": (hidden_features,) * 3}
    if builder is models.nsf:
        arguments["bins"] = num_bins
    arguments |= fixed | options

    def build(batch_input: Tensor, batch_condition: Tensor) -> FlowEstimator:
        if batch_input.dim() != 2:
            raise ValueError(
                "flowforge's sbi estimators model vectors: expected inputs of shape "
                f"(n, d), got {tuple(batch_input.shape)}"
            )
        embedding = nn.Identity() if embedding_net is None else embedding_net
        if structured_condition is not None:
            z_score = standardizing_net(batch_condition, structured_condition)
            embedding = nn.Sequential(z_score, embedding)
        with torch.no_grad():
            width = embedding(batch_condition[:2]).reshape(2, -1).shape[1]
        flow = builder(batch_input.shape[1], context_dim=width, **arguments)
        if structured_input is not None:
            standardize = Standardize.from_data(batch_input, structured=structured_input)
            flow = Flow(Compose(standardize, flow.transform), flow.base, flow.embedding)
        flow = flow.to(batch_input.dtype)
        return FlowEstimator(flow, embedding, batch_input.shape[1:], batch_condition.shape[1:])

    return build


def posterior_nn(
    model: str = "nsf",
    z_score_theta: ZScore = "independent",
    z_score_x: ZScore = "independent",
    hidden_features: int = 50,
    num_transforms: int = 5,
    num_bins: int = 10,
    embedding_net: nn.Module | None = None,
    **options: Any,
) -> Callable[[Tensor, Tensor], FlowEstimator]:
    r"""A builder of $q(\theta \mid x)$ for sbi's NPE: ``NPE(density_estimator=posterior_nn(
    "nsf"))``, in the convention of sbi's ``posterior_nn``.

    Args:
        model: ``"nsf"`` (coupling splines), ``"nsf_autoregressive"`` (alias ``"maf_rqs"``),
            ``"maf"``, ``"realnvp"``, ``"nice"`` or ``"cnf"``: the flowforge model of that
            name. ``"cnf"`` is a continuous flow trained through its exact solve (FFJORD)
            by sbi's NPE loss, its field three hidden layers of ``hidden_features``
            (``num_transforms`` and ``num_bins`` do not apply); to train it by flow
            matching instead, see the guide on continuous flows.
        z_score_theta: ``"independent"`` (per dimension), ``"structured"`` (one mean and
            standard deviation for all) or ``"none"``, from the first round's theta.
        z_score_x: the same for x, in front of the embedding net.
        hidden_features: the width of the two hidden layers of each layer's network (of
            the three of a ``"cnf"``'s field).
        num_transforms: the number of layers.
        num_bins: the bins of each spline (the spline models only).
        embedding_net: ``(N, *x_shape) -> (N, k)``, trained with the flow; None: x itself.
        **options: further arguments of the flowforge builder (``tail_bound``,
            ``activation``, ``actnorm``, ``hidden`` for other widths, ...).
    """
    return _builder(
        model, z_score_theta, z_score_x, hidden_features, num_transforms, num_bins,
        embedding_net, options,
    )  # fmt: skip


def likelihood_nn(
    model: str = "nsf",
    z_score_theta: ZScore = "independent",
    z_score_x: ZScore = "independent",
    hidden_features: int = 50,
    num_transforms: int = 5,
    num_bins: int = 10,
    embedding_net: nn.Module | None = None,
    **options: Any,
) -> Callable[[Tensor, Tensor], FlowEstimator]:
    r"""A builder of $q(x \mid \theta)$ for sbi's NLE: ``NLE(density_estimator=likelihood_nn(
    "maf"))``, in the convention of sbi's ``likelihood_nn``: the flow models x, the
    condition is theta (through ``embedding_net``, if given). Arguments as in
    `posterior_nn`."""
    inner = _builder(
        model, z_score_x, z_score_theta, hidden_features, num_transforms, num_bins,
        embedding_net, options,
    )  # fmt: skip

    def build(batch_theta: Tensor, batch_x: Tensor) -> FlowEstimator:
        return inner(batch_x, batch_theta)

    return build
