"""The peer libraries' models for the benchmark cases, built to flowforge's architectures.

``build(library, case)`` returns a :class:`~benchmarks.harness.Subject` whose model is made
with the library's public API: the same number of layers, conditioner widths, activation,
bins and tail bound as flowforge's model for the case (``flowforge_models.py``), so that the
parameter counts match as closely as the library allows. Where a library cannot express the
exact architecture the nearest one is built and ``Subject.note`` says what differs (the scale
parametrisation of an affine layer, a base distribution the library lacks, ...). A
combination that is not meaningful (a library without planar flows, say) raises
:class:`NotImplementedError` with the reason.

Conventions shared by all subjects: float32; ``loss(batch)`` is the mean negative
log-likelihood of the batch, and for case E ``loss(None)`` is the reverse-KL estimate
``mean(log q(x) - log p~(x))`` over 1000 fresh samples of the flow; ``sample(n)`` draws ``n``
samples (the caller wraps it in ``torch.no_grad``); ``module.parameters()`` holds every
trainable parameter. Each library's layers are ordered so that, like flowforge's, the layer
nearest the data keeps the first half (or the even features) and the next one the other.

``build_model(library, family, dim)`` builds the architectures of cases A (``"realnvp"``), C
(``"maf"``) and D (``"nsf"``) at another dimension, by the same code (for the quality
benchmark, ``benchmarks/quality.py``); ``log_prob(subject, x)`` is each point's log-density
through the library's own call. At every dimension the peers' parameter counts equal
flowforge's (tests/test_bench_peers.py). Beyond 2-D one construction differs from case A's:
zuko's Real NVP is assembled from ``GeneralCouplingTransform`` with flowforge's half masks,
because ``zuko.flows.RealNVP`` alternates odd and even features (the same thing only in 2-D).

**One-sided scales: why nflows' Real NVP gets a test NLL of 2.018 on two moons.** nflows
0.14's ``AffineCouplingTransform`` scales by ``sigmoid(s + 2) + 1e-3``, in (0.001, 1.001),
and ``nflows.flows.Flow.log_prob`` runs the transform forward, from data to noise (as in
nflows' own ``SimpleRealNVP``, whose BatchNorm between layers is off by default). So every
layer can only shrink volume: ``log q(x) = log N(f(x); 0, I) + sum log scale <= -(D/2) log
2 pi + (transformed features) log 1.001``, whatever the parameters. In 2-D with 8 layers
(8 transformed features) the test NLL cannot go below 1.830 nats; two moons has entropy
1.008 and needs a density up to several times the standard normal's peak, so the model sits
at the ceiling: trained as in the quality benchmark, its largest log-density on a grid over
[-3, 3]^2 is -1.8301 against the bound -1.8299, and its test NLL 2.018 (a full-covariance
Gaussian: 1.917). It is not our construction: the mask (the kept half is the conditioner's
input, the other half transformed), the parameter layout (shift then unconstrained scale,
as nflows splits them) and nflows' initialisation are the library's; the learning rate does
not matter (the bound holds for every parameter value). The same model with each coupling
wrapped in ``nflows.transforms.InverseTransform`` (scales in (0.999, 1000) from data to
noise: it can only expand) reaches 1.090 under the same budget; we keep nflows' own
direction, since the inverse only moves the ceiling to the other side (it could not
contract data wider than the base). The same holds for normflows' MAF here: its
``MaskedAffineAutoregressive`` has the same ``sigmoid(s + 2) + 1e-3`` scale, and ``Reverse``
(for a one-pass density, the MAF direction) puts its forward, the contracting one, on the
data-to-noise side. On the 64-D digits in [0, 1]^64 both ceilings are 58.5 nats, 5.41
bits/dim: worse than uniform noise (log2 17 = 4.09). nflows' MAF (``softplus(s) + 1e-3``,
unbounded above: nflows 0.14 changed its autoregressive layer from the sigmoid to it) and
every other model here has no such ceiling.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .harness import Subject, count_parameters

LIBRARIES = ("nflows", "normflows", "zuko", "pyro")
CASES = ("A", "B", "C", "D", "E", "F")

# The architectures (flowforge_models.CASES builds the same with flowforge).
REALNVP = dict(dim=2, layers=8, hidden=(64, 64))  # A
NICE = dict(dim=784, layers=4, hidden=(1000,) * 5)  # B
MAF = dict(dim=64, layers=5, hidden=(256, 256))  # C
NSF = dict(dim=16, layers=4, hidden=(128, 128), bins=8, tail_bound=5.0)  # D
PLANAR = dict(dim=2, layers=32, samples=1000)  # E
GLOW = dict(shape=(1, 32, 32), levels=3, steps=8, channels=64, alpha=0.05)  # F
SCALE_BOUND = 3.0  # flowforge's affine layers: log-scale 3 tanh(s / 3)
# build_model's architecture families: the case whose architecture each one is.
FAMILIES = {"realnvp": "A", "maf": "C", "nsf": "D"}


def available(library: str) -> bool:
    """Whether ``library`` can be imported."""
    _check_library(library)
    try:
        importlib.import_module(library)
    except ImportError:
        return False
    return True


def installed(libraries: list[str]) -> list[str]:
    """The ``libraries`` that can be imported; prints a line for each that cannot."""
    found = []
    for library in libraries:
        if available(library):
            found.append(library)
        else:
            print(f"- {library}: not installed, skipped (pip install -e '.[bench]')")
    return found


def build_installed(case: str, libraries: list[str]) -> list[Subject]:
    """The subjects of ``case`` of the installed ``libraries`` that can build it; prints a
    line for each that is skipped."""
    built = []
    for library in installed(libraries):
        try:
            built.append(build(library, case))
        except NotImplementedError as reason:
            print(f"- {library}: no case {case}: {reason}")
    return built


def build(library: str, case: str) -> Subject:
    """``library``'s model for benchmark ``case`` ("A".."F"); NotImplementedError if the
    library has no meaningful counterpart of the case."""
    _check_library(library)
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; expected one of {', '.join(CASES)}")
    return _BUILDERS[library](case)


def build_model(library: str, family: str, dim: int) -> Subject:
    """``library``'s model of the architecture ``family`` for ``dim``-dimensional vectors.

    ``family`` is one of :data:`FAMILIES`: ``"realnvp"`` is case A's architecture, ``"maf"``
    case C's and ``"nsf"`` case D's, built by the same code as :func:`build` but at ``dim``
    (so ``build_model(library, "maf", 64)`` is ``build(library, "C")``). ``library`` may
    also be ``"flowforge"``: ``flowforge_models.build(case, dim)``. The coupling families
    need an even ``dim`` (the libraries split an odd one differently). ``Subject.case`` is
    the case letter.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
    if family != "maf" and dim % 2:
        raise ValueError(f"{family} needs an even dim (the halves of every library agree)")
    if library == "flowforge":
        from . import flowforge_models

        return flowforge_models.build(FAMILIES[family], dim)
    _check_library(library)
    return _BUILDERS[library](FAMILIES[family], dim)


def log_prob(subject: Subject, x: Tensor) -> Tensor:
    """``log q(x_i)`` of each point of the batch ``x`` ``(N, D)`` under ``subject``'s model
    (a family's or case A-D's), through the library's own density call: ``(N,)``, whose mean
    is minus ``subject.loss(x)``."""
    module = subject.module
    if subject.library == "zuko":
        return module().log_prob(x)
    return module.log_prob(x)


def _size(dim: int | None, architecture: dict) -> int:
    """``dim`` if given (:func:`build_model`), else the case's own (:func:`build`)."""
    return architecture["dim"] if dim is None else dim


def _check_library(library: str) -> None:
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; expected one of {', '.join(LIBRARIES)}")


def _subject(
    library: str,
    case: str,
    module: nn.Module,
    loss: Callable[[Tensor | None], Tensor],
    sample: Callable[[int], Tensor],
    note: str,
) -> Subject:
    return Subject(library, case, module, loss, sample, count_parameters(module), note)


def _kept_half(dim: int, layer: int) -> Tensor:
    """flowforge's ``half`` masks: layer 0 keeps the first half, layer 1 the second, ..."""
    kept = torch.arange(dim) < dim // 2
    return kept if layer % 2 == 0 else ~kept


def _kept_even(dim: int, layer: int) -> Tensor:
    """flowforge's ``odd-even`` masks: layer 0 keeps the even features, layer 1 the odd, ..."""
    kept = torch.arange(dim) % 2 == 0
    return kept if layer % 2 == 0 else ~kept


def _swap_halves(dim: int) -> Tensor:
    """The permutation that exchanges the two halves (its own inverse for even ``dim``)."""
    return torch.cat((torch.arange(dim // 2, dim), torch.arange(dim // 2)))


def _u1() -> Callable[[Tensor], Tensor]:
    """The unnormalised log-density of case E's target, flowforge's U1."""
    import flowforge

    return flowforge.inference.targets.get("u1").log_prob


class _DropContext(nn.Module):
    """``net(x)`` under the ``(x, context)`` call that nflows-style couplings make."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


class _GlowConditioner(nn.Sequential):
    """Glow's coupling network, 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv,
    called as ``(x, context)`` (nflows' image couplings take user-supplied networks)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            last,
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return super().forward(x)


# ---------------------------------------------------------------------------- nflows


def _nflows(case: str, dim: int | None = None) -> Subject:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (
        AdditiveCouplingTransform,
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        ReversePermutation,
    )

    def mlp(hidden: tuple[int, ...]) -> Callable[[int, int], nn.Module]:
        return lambda n_in, n_out: _DropContext(
            MLP((n_in,), (n_out,), list(hidden), activation=F.relu)
        )

    if case == "A":
        dim, layers, hidden = _size(dim, REALNVP), REALNVP["layers"], REALNVP["hidden"]
        steps = [AffineCouplingTransform(~_kept_half(dim, i), mlp(hidden)) for i in range(layers)]
        note = (
            "affine scale sigmoid(s + 2) + 1e-3 (nflows 0.14's only one: log-scale in "
            "(-6.9, 0.001)), not exp(3 tanh(s/3)); conditioner nflows.nn.nets.MLP"
        )
    elif case == "B":
        dim, layers, hidden = NICE["dim"], NICE["layers"], NICE["hidden"]
        steps = [AdditiveCouplingTransform(~_kept_even(dim, i), mlp(hidden)) for i in range(layers)]
        steps.append(_nflows_scaling(dim))
        note = (
            "standard normal base (nflows has no logistic); the diagonal scaling is a small "
            "nflows Transform subclass (nflows has no learned per-feature scale without shift)"
        )
    elif case == "C":
        dim, layers, hidden = _size(dim, MAF), MAF["layers"], MAF["hidden"]
        steps = []
        for i in range(layers):
            if i:
                steps.append(ReversePermutation(dim))
            steps.append(
                MaskedAffineAutoregressiveTransform(
                    dim,
                    hidden[0],
                    num_blocks=len(hidden) - 1,
                    use_residual_blocks=False,
                    activation=F.relu,
                )
            )
        note = "affine scale softplus(s) + 1e-3, not exp(3 tanh(s/3))"
    elif case == "D":
        dim, layers, hidden = _size(dim, NSF), NSF["layers"], NSF["hidden"]
        steps = [
            PiecewiseRationalQuadraticCouplingTransform(
                ~_kept_half(dim, i),
                mlp(hidden),
                num_bins=NSF["bins"],
                tails="linear",
                tail_bound=NSF["tail_bound"],
            )
            for i in range(layers)
        ]
        note = "conditioner nflows.nn.nets.MLP (nflows' NSF examples use ResidualNet)"
    elif case == "E":
        raise NotImplementedError("nflows has no planar flow")
    else:
        return _nflows_glow()
    flow = Flow(CompositeTransform(steps), StandardNormal([dim]))
    return _subject("nflows", case, flow, lambda x: -flow.log_prob(x).mean(), flow.sample, note)


def _nflows_scaling(dim: int) -> nn.Module:
    """NICE's top layer ``z = x exp(s)`` as an nflows transform."""
    from nflows.transforms import Transform

    class DiagonalScaling(Transform):
        def __init__(self) -> None:
            super().__init__()
            self.log_scale = nn.Parameter(torch.zeros(dim))

        def forward(self, inputs: Tensor, context: Tensor | None = None):
            return inputs * self.log_scale.exp(), self.log_scale.sum().expand(inputs.shape[0])

        def inverse(self, inputs: Tensor, context: Tensor | None = None):
            logdet = -self.log_scale.sum().expand(inputs.shape[0])
            return inputs * torch.exp(-self.log_scale), logdet

    return DiagonalScaling()


def _nflows_glow() -> Subject:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        ActNorm,
        AffineCouplingTransform,
        CompositeTransform,
        Logit,
        MultiscaleCompositeTransform,
        OneByOneConvolution,
        PointwiseAffineTransform,
        SqueezeTransform,
    )

    shape, levels, steps, hidden = GLOW["shape"], GLOW["levels"], GLOW["steps"], GLOW["channels"]
    multiscale = MultiscaleCompositeTransform(levels)
    level_shape: tuple[int, ...] | None = tuple(shape)
    for _ in range(levels):
        squeeze = SqueezeTransform()
        level_shape = squeeze.get_output_shape(*level_shape)
        width = level_shape[0]
        layers = [squeeze]
        for _ in range(steps):
            layers += [
                ActNorm(width),
                OneByOneConvolution(width),
                AffineCouplingTransform(
                    torch.arange(width) >= width // 2,
                    lambda n_in, n_out: _GlowConditioner(n_in, n_out, hidden),
                ),
            ]
        level_shape = multiscale.add_transform(CompositeTransform(layers), level_shape)
    alpha = GLOW["alpha"]
    logit = [PointwiseAffineTransform(alpha, 1 - 2 * alpha), Logit()]  # flowforge's Logit(0.05)
    flow = Flow(CompositeTransform([*logit, multiscale]), StandardNormal([math.prod(shape)]))

    def sample(n: int) -> Tensor:
        return flow.sample(n).reshape(n, *shape)

    note = (
        "Glow assembled from nflows' SqueezeTransform, ActNorm, OneByOneConvolution (LU with "
        "bias and a fixed random permutation), AffineCouplingTransform (scale sigmoid(s + 2) "
        "+ 1e-3) and MultiscaleCompositeTransform: nflows has no Glow class; conditioner "
        "3x3-1x1-3x3 convs without weight norm; no learned prior at the splits (standard "
        "normal base)"
    )
    return _subject("nflows", "F", flow, lambda x: -flow.log_prob(x).mean(), sample, note)


# ---------------------------------------------------------------------------- normflows


def _normflows(case: str, dim: int | None = None) -> Subject:
    import normflows as nf

    if case == "E":
        return _normflows_planar()
    if case == "F":
        return _normflows_glow()
    data_to_latent: list[nn.Module] = []  # normflows lists layers latent -> data: reversed below
    if case == "A":
        dim, layers, hidden = _size(dim, REALNVP), REALNVP["layers"], REALNVP["hidden"]
        for i in range(layers):
            net = nf.nets.MLP([dim // 2, *hidden, 2 * (dim - dim // 2)], init_zeros=True)
            split = "channel" if i % 2 == 0 else "channel_inv"  # keeps first / second half
            data_to_latent.append(
                nf.flows.AffineCouplingBlock(net, scale_map="exp", split_mode=split)
            )
        note = (
            "affine scale exp(s), unbounded (normflows' maps are exp and sigmoid), not "
            "exp(3 tanh(s/3)); conditioner nf.nets.MLP"
        )
    elif case == "B":
        dim, layers, hidden = NICE["dim"], NICE["layers"], NICE["hidden"]
        for i in range(layers):
            net = nf.nets.MLP([dim // 2, *hidden, dim // 2], init_zeros=True)
            split = "checkerboard_inv" if i % 2 == 0 else "checkerboard"  # keeps even / odd
            data_to_latent.append(nf.flows.AffineCouplingBlock(net, scale=False, split_mode=split))
        data_to_latent.append(nf.flows.AffineConstFlow((dim,), scale=True, shift=False))
        note = (
            "standard normal base (normflows has no logistic); additive coupling = "
            "AffineCouplingBlock(scale=False), checkerboard split; scaling AffineConstFlow"
        )
    elif case == "C":
        dim, layers, hidden = _size(dim, MAF), MAF["layers"], MAF["hidden"]
        for i in range(layers):
            if i:
                data_to_latent.append(nf.flows.Permute(dim, mode="swap"))
            made = nf.flows.MaskedAffineAutoregressive(
                dim, hidden[0], num_blocks=len(hidden) - 1, use_residual_blocks=False
            )
            # normflows runs a layer's forward from latent to data: Reverse puts the one-pass
            # direction on the density side, as in MAF (bare, log_prob would take 64 passes).
            data_to_latent.append(nf.flows.Reverse(made))
        note = (
            "MaskedAffineAutoregressive in flows.Reverse, so log_prob is one MADE pass (MAF); "
            "scale sigmoid(s + 2) + 1e-3, not exp(3 tanh(s/3)); normflows' feed-forward MADE "
            "has no activation after its input layer (same parameters, one ReLU, not two); "
            "Permute 'swap' of halves between layers instead of reversal (normflows has "
            "shuffle or swap)"
        )
    elif case == "D":
        from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling

        dim, layers, hidden = _size(dim, NSF), NSF["layers"], NSF["hidden"]
        for i in range(layers):
            coupling = PiecewiseRationalQuadraticCoupling(
                mask=(~_kept_half(dim, i)).int(),
                transform_net_create_fn=lambda n_in, n_out: _DropContext(
                    nf.nets.MLP([n_in, *hidden, n_out])
                ),
                num_bins=NSF["bins"],
                tails="linear",
                tail_bound=NSF["tail_bound"],
            )
            data_to_latent.append(nf.flows.Reverse(coupling))
        note = (
            "the spline layer of CoupledRationalQuadraticSpline (PiecewiseRationalQuadratic"
            "Coupling, in Reverse as that wrapper uses it) with an MLP conditioner and half "
            "masks: the wrapper itself fixes a ResidualNet conditioner, odd/even masks and an "
            "extra unconditional spline on the kept half"
        )
    base = nf.distributions.DiagGaussian(dim, trainable=False)
    model = nf.NormalizingFlow(base, data_to_latent[::-1])
    return _subject("normflows", case, model, model.forward_kld, lambda n: model.sample(n)[0], note)


def _normflows_planar() -> Subject:
    import normflows as nf

    dim, target = PLANAR["dim"], _u1()
    base = nf.distributions.DiagGaussian(dim, trainable=True)
    model = nf.NormalizingFlow(base, [nf.flows.Planar((dim,)) for _ in range(PLANAR["layers"])])

    def loss(_: Tensor | None) -> Tensor:
        x, log_q = model.sample(PLANAR["samples"])
        return (log_q - target(x)).mean()

    note = "Planar (tanh) layers on a trainable DiagGaussian base"
    return _subject("normflows", "E", model, loss, lambda n: model.sample(n)[0], note)


def _normflows_glow() -> Subject:
    import normflows as nf

    (c, h, w), levels, steps = GLOW["shape"], GLOW["levels"], GLOW["steps"]
    flows, merges, bases = [], [], []
    for i in range(levels):  # i = 0 is the coarsest level, the first from the latent side
        width = c * 2 ** (levels + 1 - i)
        level = [nf.flows.GlowBlock(width, GLOW["channels"]) for _ in range(steps)]
        flows.append([*level, nf.flows.Squeeze()])
        if i:  # the half factored out at the finer levels
            merges.append(nf.flows.Merge())
            factor = 2 ** (levels - i)
            latent = (c * factor, h // factor, w // factor)
        else:  # all channels of the coarsest level
            factor = 2**levels
            latent = (width, h // factor, w // factor)
        bases.append(nf.distributions.GlowBase(latent))
    logit = nf.transforms.Logit(alpha=GLOW["alpha"])
    model = nf.MultiscaleFlow(bases, flows, merges, transform=logit, class_cond=False)
    note = (
        "normflows' Glow recipe: GlowBlock (coupling scale sigmoid(s + 2) as in Glow, conv "
        "net 3x3-1x1-3x3 without weight norm, LU 1x1 conv, ActNorm), Squeeze, Merge, "
        "MultiscaleFlow with Logit(0.05); GlowBase learns a mean and scale per channel of "
        "each level where flowforge's learned prior is a conv of the kept half"
    )
    return _subject("normflows", "F", model, model.forward_kld, lambda n: model.sample(n)[0], note)


# ---------------------------------------------------------------------------- zuko


def _zuko_affine() -> Callable[..., object]:
    """zuko's affine map with log-scale ``s / (1 + |s| / 3)``: bounded by 3 like flowforge's."""
    from zuko.transforms import MonotonicAffineTransform

    return partial(MonotonicAffineTransform, slope=math.exp(-SCALE_BOUND))


def _zuko_scaling(log_scale: Tensor) -> object:
    """NICE's diagonal scaling ``z = x exp(s)`` as a torch transform of the vector."""
    from torch.distributions.transforms import AffineTransform

    return AffineTransform(0.0, log_scale.exp(), event_dim=1)


def _zuko_half_couplings(dim: int, layers: int, hidden: tuple, **transform: object) -> nn.Module:
    """A zuko flow of ``GeneralCouplingTransform`` layers on flowforge's half masks (layer
    ``i`` keeps the first half when ``i`` is even) over a standard normal base."""
    from zuko.distributions import DiagNormal
    from zuko.flows import Flow, GeneralCouplingTransform
    from zuko.lazy import UnconditionalDistribution

    steps = [
        GeneralCouplingTransform(dim, mask=_kept_half(dim, i), hidden_features=hidden, **transform)
        for i in range(layers)
    ]
    base = UnconditionalDistribution(DiagNormal, torch.zeros(dim), torch.ones(dim), buffer=True)
    return Flow(steps, base)


def _zuko(case: str, dim: int | None = None) -> Subject:
    import zuko

    if case == "E":
        raise NotImplementedError("zuko has no planar flow")
    if case == "F":
        raise NotImplementedError("zuko has no image transforms (squeeze, 1x1 convolution)")
    if case == "A" and _size(dim, REALNVP) == 2:
        dim = 2
        flow = zuko.flows.RealNVP(
            dim,
            transforms=REALNVP["layers"],
            hidden_features=REALNVP["hidden"],
            univariate=_zuko_affine(),
        )
        note = (
            "zuko.flows.RealNVP (its odd/even masks are the halves in 2-D); affine log-scale "
            "s / (1 + |s|/3) (MonotonicAffineTransform, slope e^-3), not 3 tanh(s/3)"
        )
    elif case == "A":  # beyond 2-D, zuko.flows.RealNVP's odd/even masks are not the halves
        flow = _zuko_half_couplings(
            dim, REALNVP["layers"], REALNVP["hidden"], univariate=_zuko_affine()
        )
        note = (
            "GeneralCouplingTransform with flowforge's half masks, as zuko.flows.RealNVP builds "
            "it but for the masks (zuko's alternate odd/even features); affine log-scale "
            "s / (1 + |s|/3) (MonotonicAffineTransform, slope e^-3), not 3 tanh(s/3)"
        )
    elif case == "B":
        from zuko.distributions import DiagNormal
        from zuko.flows import Flow, GeneralCouplingTransform
        from zuko.lazy import UnconditionalDistribution, UnconditionalTransform
        from zuko.transforms import AdditiveTransform

        dim = NICE["dim"]
        steps = [
            GeneralCouplingTransform(
                dim,
                mask=_kept_even(dim, i),
                univariate=AdditiveTransform,
                shapes=((),),
                hidden_features=NICE["hidden"],
            )
            for i in range(NICE["layers"])
        ]
        steps.append(UnconditionalTransform(_zuko_scaling, torch.zeros(dim)))
        base = UnconditionalDistribution(DiagNormal, torch.zeros(dim), torch.ones(dim), buffer=True)
        flow = Flow(steps, base)
        note = (
            "standard normal base (zuko has no logistic); couplings GeneralCouplingTransform "
            "with AdditiveTransform, as zuko.flows.NICE; scaling torch's AffineTransform on a "
            "learned log-scale"
        )
    elif case == "C":
        dim = _size(dim, MAF)
        flow = zuko.flows.MAF(
            dim, transforms=MAF["layers"], hidden_features=MAF["hidden"], univariate=_zuko_affine()
        )
        note = (
            "zuko.flows.MAF alternates natural and reversed orders (the same model as a "
            "reverse permutation); affine log-scale s / (1 + |s|/3), not 3 tanh(s/3)"
        )
    else:
        from zuko.transforms import MonotonicRQSTransform

        dim, bins = _size(dim, NSF), NSF["bins"]
        flow = _zuko_half_couplings(
            dim,
            NSF["layers"],
            NSF["hidden"],
            univariate=partial(MonotonicRQSTransform, bound=NSF["tail_bound"]),
            shapes=((bins,), (bins,), (bins - 1,)),
        )
        note = (
            "GeneralCouplingTransform with MonotonicRQSTransform (zuko.flows.NSF(passes=2) "
            "would mask a full-width MLP instead of splitting)"
        )
    return _subject(
        "zuko",
        case,
        flow,
        lambda x: -flow().log_prob(x).mean(),
        lambda n: flow().sample((n,)),
        note,
    )


# ---------------------------------------------------------------------------- pyro


class _PyroFlow(nn.Module):
    """A pyro flow as one module; :meth:`distribution` makes its ``TransformedDistribution``.

    ``steps`` run from data to latent, as flowforge's layers (the distribution uses their
    ``.inv``), or with ``generative=True`` from latent to data (planar layers have no
    inverse). A step is a pyro ``TransformModule``, an index tensor (a ``Permute``) or
    ``"scale"`` (NICE's learned diagonal scaling ``z = x exp(s)``). The base is a standard
    normal or logistic, or with ``learn_base`` a diagonal Gaussian with learned location and
    log-scale. A distribution holding tensors computed from parameters (the scaling, the
    learned base) is made per call, as in a pyro guide; otherwise it is made once and again
    only when the buffers it holds have moved (``module.to``).
    """

    def __init__(
        self,
        dim: int,
        steps: list,
        *,
        base: str = "normal",
        learn_base: bool = False,
        generative: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(s for s in steps if isinstance(s, nn.Module))
        self.plan: list[tuple[str, int]] = []
        modules = permutations = 0
        for step in steps:
            if isinstance(step, nn.Module):
                self.plan.append(("module", modules))
                modules += 1
            elif isinstance(step, Tensor):
                self.register_buffer(f"permutation{permutations}", step, persistent=False)
                self.plan.append(("permute", permutations))
                permutations += 1
            elif step == "scale":
                self.log_scale = nn.Parameter(torch.zeros(dim))
                self.plan.append(("scale", 0))
            else:
                raise ValueError(f"unknown step {step!r}")
        self.base, self.learn_base, self.generative = base, learn_base, generative
        self.static = not learn_base and "scale" not in [kind for kind, _ in self.plan]
        self._made: tuple[Tensor, object] | None = None  # (the loc it holds, distribution)
        if learn_base:
            self.loc = nn.Parameter(torch.zeros(dim))
            self.base_log_scale = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("loc", torch.zeros(dim), persistent=False)
            self.register_buffer("scale", torch.ones(dim), persistent=False)

    def distribution(self):
        if self.static and self._made is not None and self._made[0] is self.loc:
            return self._made[1]
        made = self._make()
        if self.static:
            self._made = (self.loc, made)
        return made

    def _make(self):
        import pyro.distributions as dist
        from pyro.distributions.transforms import AffineTransform, Permute

        transforms = []
        for kind, index in self.plan:
            if kind == "module":
                transforms.append(self.layers[index])
            elif kind == "permute":
                transforms.append(Permute(getattr(self, f"permutation{index}")))
            else:
                transforms.append(AffineTransform(0.0, self.log_scale.exp(), event_dim=1))
        if not self.generative:
            transforms = [t.inv for t in reversed(transforms)]
        scale = self.base_log_scale.exp() if self.learn_base else self.scale
        family = dist.Logistic if self.base == "logistic" else dist.Normal
        base = dist.Independent(family(self.loc, scale, validate_args=False), 1)
        return dist.TransformedDistribution(base, transforms, validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        # A fresh alias of x: pyro's layers cache their last (input, output) pair by
        # identity, so a batch passed again would return the previous call's graph.
        return self.distribution().log_prob(x.view_as(x))

    def sample(self, n: int) -> Tensor:
        return self.distribution().sample((n,))


class _ShiftOnly(nn.Module):
    """A pyro coupling hypernet returning ``(shift, 0)``: AffineCoupling made additive."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shift = self.net(x)
        return shift, torch.zeros_like(shift)


def _pyro(case: str, dim: int | None = None) -> Subject:
    from pyro.distributions.transforms import (
        AffineAutoregressive,
        AffineCoupling,
        Planar,
        SplineCoupling,
    )
    from pyro.nn import AutoRegressiveNN, DenseNN

    base, learn_base, generative = "normal", False, False
    if case == "A":
        dim, layers, hidden = _size(dim, REALNVP), REALNVP["layers"], REALNVP["hidden"]
        half = dim // 2
        steps: list = []
        for i in range(layers):
            if i:
                steps.append(_swap_halves(dim))
            net = DenseNN(half, list(hidden), param_dims=[dim - half, dim - half])
            steps.append(
                AffineCoupling(
                    half, net, log_scale_min_clip=-SCALE_BOUND, log_scale_max_clip=SCALE_BOUND
                )
            )
        note = (
            "log-scale hard-clipped to [-3, 3] (pyro's clip, gradients passed through), not "
            "3 tanh(s/3); AffineCoupling keeps the first half, so a Permute swaps halves "
            "between layers"
        )
    elif case == "B":
        dim, layers, hidden = NICE["dim"], NICE["layers"], NICE["hidden"]
        half = dim // 2
        steps = [torch.cat((torch.arange(0, dim, 2), torch.arange(1, dim, 2)))]  # even, odd
        for i in range(layers):
            if i:
                steps.append(_swap_halves(dim))
            net = _ShiftOnly(DenseNN(half, list(hidden), param_dims=[dim - half]))
            steps.append(AffineCoupling(half, net))
        steps.append("scale")
        base = "logistic"
        note = (
            "additive coupling = AffineCoupling with a shift-only hypernet (pyro has no "
            "additive coupling); odd/even parts by a Permute to (even, odd) and swaps of "
            "halves; scaling torch's AffineTransform on a learned log-scale"
        )
    elif case == "C":
        dim, layers, hidden = _size(dim, MAF), MAF["layers"], MAF["hidden"]
        steps = []
        for i in range(layers):
            if i:
                steps.append(torch.arange(dim - 1, -1, -1))
            net = AutoRegressiveNN(dim, list(hidden), permutation=torch.arange(dim))
            steps.append(
                AffineAutoregressive(
                    net, log_scale_min_clip=-SCALE_BOUND, log_scale_max_clip=SCALE_BOUND
                )
            )
        note = (
            "AffineAutoregressive (pyro's IAF layer) used through .inv, so log_prob is one "
            "pass (MAF); log-scale hard-clipped to [-3, 3], not 3 tanh(s/3)"
        )
    elif case == "D":
        dim, layers, hidden, bins = _size(dim, NSF), NSF["layers"], NSF["hidden"], NSF["bins"]
        half = dim // 2
        steps = []
        for i in range(layers):
            if i:
                steps.append(_swap_halves(dim))
            changed = dim - half
            widths = [changed * bins, changed * bins, changed * (bins - 1)]
            coupling = SplineCoupling(
                dim,
                half,
                DenseNN(half, list(hidden), param_dims=widths),
                count_bins=bins,
                bound=NSF["tail_bound"],
                order="quadratic",
                identity=True,
            )
            # identity=True leaves the kept half alone; its spline is built anyway: unused.
            coupling.lower_spline.requires_grad_(False)
            steps.append(coupling)
        note = (
            "SplineCoupling(order='quadratic', identity=True), whose unused spline for the "
            f"kept half ({half * (3 * bins - 1)} parameters a layer) is frozen and not "
            "counted; a Permute swaps halves between layers"
        )
    elif case == "E":
        dim = PLANAR["dim"]
        steps = [Planar(dim) for _ in range(PLANAR["layers"])]
        learn_base, generative = True, True
        note = "Planar layers on a learned diagonal Gaussian Normal(loc, exp(log_scale))"
    else:
        raise NotImplementedError("pyro has no multi-scale image flow (squeeze, factor-out)")
    flow = _PyroFlow(dim, steps, base=base, learn_base=learn_base, generative=generative)
    if case == "E":
        target = _u1()

        def loss(_: Tensor | None) -> Tensor:
            q = flow.distribution()
            x = q.rsample((PLANAR["samples"],))
            return (q.log_prob(x) - target(x)).mean()

    else:

        def loss(x: Tensor | None) -> Tensor:
            return -flow.log_prob(x).mean()

    return _subject("pyro", case, flow, loss, flow.sample, note)


_BUILDERS: dict[str, Callable[[str], Subject]] = {
    "nflows": _nflows,
    "normflows": _normflows,
    "zuko": _zuko,
    "pyro": _pyro,
}
