"""Elementwise affine transforms: NICE's diagonal scaling and Glow's ActNorm."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.transforms.base import Transform


class _InitialisedFromData(nn.Module):
    """A layer initialised from its first batch. The ``initialized`` buffer is the state (it
    is saved and loaded); a Python copy of it, read once it is true, keeps a compiled step
    free of the tensor read (a graph break) on every call."""

    _settled = False

    def _is_initialized(self) -> bool:
        if not self._settled:
            self._settled = bool(self.initialized)
        return self._settled

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._settled = False  # read the loaded flag again


class DiagonalScaling(_InitialisedFromData, Transform):
    r"""NICE's top layer: $z = x \odot e^{s}$, $\log|\det J| = \sum_i s_i$.

    ``s`` is a learnable ``(dim,)`` vector, initialised to zero (the identity), or, with
    ``target_scale``, from the data: the first forward (data -> latent) call of a batch of
    two or more sets $s_i = \log(\sigma^\ast / \sigma_i)$ from the batch's per-feature
    standard deviation $\sigma_i$ (at least ``eps``), so that each output feature starts
    with the spread $\sigma^\ast$ of the base (the standard logistic's $\pi / \sqrt 3$ for
    NICE). A feature of dequantised pixels that are nearly always 0 has $\sigma_i \approx
    0.001$ and starts at $s_i \approx 7.4$, where gradient steps of 1e-3 would take thousands
    of steps to bring it. As for `ActNorm`, a first inverse call that tracks gradients in
    training mode starts from the identity instead, and the ``initialized`` flag is a buffer
    of the state dict.

    ``gain`` $k$ makes $s = k\,\theta$ for the stored parameter $\theta$ (``log_scale``):
    an optimiser that moves $\theta$ by about its rate a step, as Adam does whatever the
    gradient's size, then moves $s$ $k$ times as fast, so that from zero $s$ reaches the
    level of the data in a few epochs while the rest of the flow trains at its own pace
    (NICE on MNIST: ``experiments/nice_pilots.py``).

    Args:
        dim: the number of features.
        target_scale: the standard deviation the outputs should start with, or None
            (start from the identity).
        eps: standard deviations below this count as ``eps``.
        gain: the factor $k$ of $s = k\,\theta$ (1: $s$ is the parameter).
    """

    def __init__(
        self,
        dim: int,
        target_scale: float | None = None,
        eps: float = 1e-6,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.target_scale, self.eps = target_scale, eps
        if isinstance(gain, bool) or not (isinstance(gain, int | float) and 0 < gain < math.inf):
            raise ValueError(f"gain must be a positive number, got {gain!r}")
        self.gain = float(gain)
        if target_scale is not None:  # no buffer otherwise: older saved models still load
            if not (isinstance(target_scale, int | float) and target_scale > 0):
                raise ValueError(f"target_scale must be a positive number, got {target_scale!r}")
            self.register_buffer("initialized", torch.tensor(False))

    @property
    def scale(self) -> Tensor:
        r"""$s = k\,\theta$, ``(dim,)``."""
        return self.log_scale * self.gain if self.gain != 1.0 else self.log_scale

    def _pending(self) -> bool:
        return self.target_scale is not None and not self._is_initialized()

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``s`` from a batch ``x`` ``(batch, dim)`` so that ``forward(x)`` has the
        target spread per feature."""
        std = x.std(dim=0, unbiased=False).clamp_min(self.eps)
        self.log_scale.copy_((self.target_scale / std).log() / self.gain)
        self.initialized.fill_(True)
        self._settled = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.shape[0] > 1 and self._pending():
            self.initialize(x)
        s = self.scale
        return x * s.exp(), s.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self._pending() and z.shape[0] > 0 and self.training and torch.is_grad_enabled():
            self.initialized.fill_(True)
            self._settled = True
        s = self.scale
        return z * torch.exp(-s), (-s.sum()).expand(z.shape[0])


class ActNorm(_InitialisedFromData, Transform):
    r"""Activation normalisation (Kingma & Dhariwal 2018) with data-dependent initialisation.

    $$
    z = (x - \mu) \odot e^{-\ell}, \qquad
    \log|\det J| = -\frac{N}{F} \textstyle\sum_f \ell_f
    $$

    where ``F`` is the number of features (channels) and ``N`` the number of elements of one
    sample, so every spatial position of an image shares its channel's parameters.

    Initialisation: the first forward (data -> latent) call sets $\mu$ and
    $e^{\ell}$ to the batch's per-feature mean and standard deviation, so the output
    starts with zero mean and unit variance. A feature whose standard deviation is below
    ``eps`` (a constant feature) keeps scale 1 instead of being divided by ~0. A first
    inverse call that tracks gradients in training mode (variational inference, which trains
    the generative direction) starts from the identity instead. Either way the ``initialized``
    flag is set; it is a buffer, so it is saved in the state dict and a loaded model is not
    re-initialised. An empty batch has no statistics: it passes through without initialising.

    Args:
        features: number of features (``D`` for vectors, ``C`` for images).
        event_dims: dimensions of one sample: 1 for ``(D,)``, 3 for ``(C, H, W)``.
        eps: standard deviations below this are treated as zero.
    """

    def __init__(self, features: int, event_dims: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        shape = (features,) + (1,) * (event_dims - 1)
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from a batch ``x`` so that ``forward(x)`` is standardised."""
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
        std = torch.where(std > self.eps, std, torch.ones_like(std))
        self.loc.copy_(mean.view_as(self.loc))
        self.log_scale.copy_(std.log().view_as(self.log_scale))
        self.initialized.fill_(True)
        self._settled = True

    def _logdet(self, x: Tensor) -> Tensor:
        positions = math.prod(x.shape[1:]) // self.log_scale.numel()
        return (-positions * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.shape[0] > 0 and not self._is_initialized():
            self.initialize(x)
        return (x - self.loc) * torch.exp(-self.log_scale), self._logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        tracked = z.shape[0] > 0 and self.training and torch.is_grad_enabled()
        if tracked and not self._is_initialized():
            self.initialized.fill_(True)
            self._settled = True
        return z * self.log_scale.exp() + self.loc, -self._logdet(z)

    def extra_repr(self) -> str:
        return f"features={self.loc.shape[0]}, initialized={bool(self.initialized)}"


class Standardize(Transform):
    r"""A fixed affine map that standardises data: $z = (x - \mu) / \sigma$,
    $\log|\det J| = -\sum_i \log \sigma_i$.

    ``shift`` $\mu$ and ``scale`` $\sigma$ are buffers, not parameters: they are saved in the
    state dict and moved with the module, but training leaves them alone (sbi's z-scoring of
    theta, `flowforge.interop.sbi`). Shapes ``(batch, *event_shape)``, with ``shift`` and
    ``scale`` of the event shape (or broadcastable to it).

    Examples:
        >>> import torch
        >>> from flowforge.transforms import Standardize
        >>> x = torch.randn(1000, 3) * torch.tensor([1.0, 10.0, 0.1]) + 5
        >>> z, logdet = Standardize.from_data(x)(x)
        >>> z.mean(0).abs().max() < 1e-4, z.std(0)
        (tensor(True), tensor([1.0000, 1.0000, 1.0000]))
    """

    def __init__(self, shift: Tensor, scale: Tensor) -> None:
        super().__init__()
        shift, scale = torch.as_tensor(shift), torch.as_tensor(scale)
        if not (scale > 0).all():
            raise ValueError("Standardize needs scales > 0")
        shift, scale = torch.broadcast_tensors(shift, scale)
        self.register_buffer("shift", shift.clone())
        self.register_buffer("scale", scale.clone())

    @classmethod
    def from_data(
        cls, x: Tensor, structured: bool = False, min_scale: float = 1e-14
    ) -> Standardize:
        """The standardisation of a batch ``x`` ``(n, *event_shape)``: per feature
        (``structured=False``) or one mean and one standard deviation for all of them
        (``structured=True``, for time series or images). A standard deviation below
        ``min_scale`` (a constant feature) is taken as 1."""
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(
                f"Standardize.from_data needs a batch (n >= 2, ...), got {tuple(x.shape)}"
            )
        dims = tuple(range(x.dim())) if structured else 0
        shift = x.mean(dims).expand(x.shape[1:])
        scale = x.std(dims).expand(x.shape[1:])
        scale = torch.where(scale >= min_scale, scale, torch.ones_like(scale))
        return cls(shift.detach(), scale.detach())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.shift) / self.scale, (-self.scale.log().sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * self.scale + self.shift, self.scale.log().sum().expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"features={tuple(self.shift.shape)}"
