"""The transform abstraction: a bijection that returns its log-determinant in the same pass.

Convention used everywhere in flowforge: a transform's ``forward`` maps data ``x`` to the
latent ``z``, and returns ``(z, log|det dz/dx|)``; ``inverse`` maps ``z`` back to ``x`` and
returns ``(x, log|det dx/dz|)``. Both log-determinants have shape ``(batch,)``, one value per
sample. Every call takes an optional ``context`` tensor of shape ``(batch, context_dim)``;
unconditional transforms ignore it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Transform(nn.Module, ABC):
    r"""An invertible map :math:`f` with its log-Jacobian-determinant.

    Subclasses implement :meth:`forward` and :meth:`inverse`, each returning the output and
    the log-determinant computed in the same pass:

    .. math::
        z = f(x),\ \log|\det \partial f / \partial x| \qquad
        x = f^{-1}(z),\ \log|\det \partial f^{-1} / \partial z|

    Shapes: input ``(batch, *event_shape)``, output the same, log-determinant ``(batch,)``.
    """

    @abstractmethod
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data to latent: ``(z, log|det dz/dx|)``."""

    @abstractmethod
    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map latent to data: ``(x, log|det dx/dz|)``."""

    @property
    def inv(self) -> Transform:
        """The same bijection with its directions swapped (shares parameters)."""
        return Inverse(self)


class Inverse(Transform):
    r"""The inverse :math:`f^{-1}` of a transform :math:`f`, sharing its parameters."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(z, context)

    @property
    def inv(self) -> Transform:
        return self.transform


class Compose(Transform):
    r"""The composition :math:`f = f_K \circ \dots \circ f_1`: ``transforms[0]`` is applied first.

    .. math:: \log|\det \partial f/\partial x| = \sum_k \log|\det \partial f_k/\partial h_{k-1}|
    """

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        if not transforms:
            raise ValueError("Compose needs at least one transform, got none")
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, logdet = transform(x, context)
            total = total + logdet
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for transform in reversed(self.transforms):
            z, logdet = transform.inverse(z, context)
            total = total + logdet
        return z, total

    def trace(self, x: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Every intermediate of the forward pass: ``[x, f_1(x), f_2(f_1(x)), ..., z]``."""
        states = [x]
        for transform in self.transforms:
            x, _ = transform(x, context)
            states.append(x)
        return states

    def trace_inverse(self, z: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Every intermediate of the inverse pass: ``[z, f_K^{-1}(z), ..., x]``."""
        states = [z]
        for transform in reversed(self.transforms):
            z, _ = transform.inverse(z, context)
            states.append(z)
        return states

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, index: int) -> Transform:
        return self.transforms[index]


def steps(transform: Transform) -> list[Transform]:
    """The data -> latent layers of a transform, in order, with compositions unrolled.

    ``Compose(a, b)`` gives ``[a, b]``; ``Inverse(Compose(a, b))`` gives ``[b.inv, a.inv]``;
    any other transform gives ``[transform]``. Used to follow samples layer by layer.
    """
    if isinstance(transform, Compose):
        return [s for t in transform.transforms for s in steps(t)]
    if isinstance(transform, Inverse) and isinstance(transform.transform, Compose):
        return [s.inv for s in reversed(steps(transform.transform))]
    return [transform]
