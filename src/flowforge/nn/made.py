r"""MADE: the masked autoencoder for distribution estimation (Germain et al. 2015).

An MLP whose weight matrices are masked so that output ``i`` depends only on the inputs that
come before ``i`` in an ordering. Every unit gets a degree: input ``i`` the degree
$d_i \in \{1..D\}$ (its position in the ordering), each hidden unit a degree
$m \in \{1..D-1\}$ ($\{0..D-1\}$ with a context, so that units of degree 0
see only the context), context inputs degree 0. A connection from a unit of degree
$a$ into a hidden unit of degree $m$ is kept iff $m \ge a$; into the
outputs of feature ``i`` iff $d_i > a$. Then $\partial y_i / \partial x_j = 0$
unless $d_j < d_i$: the Jacobian is strictly triangular under the ordering.

Inverting an autoregressive map needs the outputs one feature at a time. Instead of ``D``
full passes, `MADE.autoregress()` takes the hidden units in order of degree and computes
each once, as soon as every input it depends on is known: a whole inversion costs about one
pass of arithmetic, in ``D`` small steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.nn.mlp import make_activation


def input_degrees(features: int, order: str | Sequence[int] = "natural", seed: int = 0) -> Tensor:
    """Degrees ``(features,)`` in ``1..features``: feature ``i`` is the ``d_i``-th in the order.

    ``order`` is ``"natural"`` (0, 1, ..., D-1), ``"reverse"``, ``"random"`` (a permutation
    drawn with ``seed``) or an explicit sequence of the feature indices in order.
    """
    if isinstance(order, str):
        if order == "natural":
            order = list(range(features))
        elif order == "reverse":
            order = list(range(features - 1, -1, -1))
        elif order == "random":
            generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(features, generator=generator).tolist()
        else:
            raise ValueError(
                f"unknown order {order!r}; expected natural, reverse, random or a list"
            )
    order = [int(i) for i in order]
    if sorted(order) != list(range(features)):
        raise ValueError(f"order must be a permutation of 0..{features - 1}, got {order}")
    degrees = torch.empty(features, dtype=torch.long)
    degrees[order] = torch.arange(1, features + 1)
    return degrees


def hidden_degrees(features: int, width: int, conditional: bool = False) -> Tensor:
    """Degrees ``(width,)`` of a hidden layer, cycling through ``1..D-1``; with a context
    through ``0..D-1``, so that some units see only the context and the first feature's
    parameters depend on it too (all 0 for D = 1)."""
    if features == 1:
        return torch.zeros(width, dtype=torch.long)
    if conditional:
        return torch.arange(width) % features
    return torch.arange(width) % (features - 1) + 1


class MaskedLinear(nn.Linear):
    r"""$y = (M \odot W) x + b$ with a fixed binary mask ``M`` ``(out, in)``."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""An autoregressive network: ``params_per_feature`` outputs per input feature, each
    depending only on the features before it in the ordering (and on the context).

    $$
    h_0 = [x, c],\quad h_l = \sigma(M_l \odot W_l\, h_{l-1} + b_l)
    \ (+\, h_{l-1} \text{ if residual}),\quad y = M_{L+1} \odot W_{L+1}\, h_L + b_{L+1}
    $$

    The last layer starts at zero, so a transform built on it starts as the identity. With
    ``residual=True`` every hidden layer after the first adds its input (all hidden widths
    must then be equal; the hidden units keep their degrees, so the masks stay valid).

    Args:
        features: ``D``, the autoregressive inputs.
        params_per_feature: ``P``, outputs per feature.
        hidden: hidden widths, e.g. ``(64, 64)``.
        context_dim: width of a context appended to the input (degree 0: seen by every unit).
        order: the autoregressive ordering (see `input_degrees()`).
        residual: add residual connections between hidden layers.
        activation: activation name or constructor.
        seed: for ``order="random"``.

    Shapes: ``(batch, D + context_dim)`` (the features, then the context) ``-> (batch, D, P)``.
    """

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        order: str | Sequence[int] = "natural",
        residual: bool = False,
        activation: str | Callable[[], nn.Module] = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        hidden = tuple(hidden)
        if residual and len(set(hidden)) > 1:
            raise ValueError(f"a residual MADE needs equal hidden widths, got {hidden}")
        self.features, self.params_per_feature = features, params_per_feature
        self.context_dim, self.residual = context_dim, residual
        degrees = input_degrees(features, order, seed)
        self.register_buffer("degrees", degrees, persistent=False)
        previous = torch.cat((degrees, torch.zeros(context_dim, dtype=torch.long)))
        layers = []
        for width in hidden:
            current = hidden_degrees(features, width, conditional=context_dim > 0)
            layer = MaskedLinear(current[:, None] >= previous[None, :])
            layer.register_buffer("unit_degrees", current, persistent=False)
            layers.append(layer)
            previous = current
        self.hidden = nn.ModuleList(layers)
        self.activations = nn.ModuleList(make_activation(activation) for _ in hidden)
        out_degrees = degrees.repeat_interleave(params_per_feature)
        self.output = MaskedLinear(out_degrees[:, None] > previous[None, :])
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, h: Tensor) -> Tensor:
        for i, (layer, activation) in enumerate(zip(self.hidden, self.activations, strict=True)):
            update = activation(layer(h))
            h = h + update if self.residual and i > 0 else update
        return self.output(h).unflatten(-1, (self.features, self.params_per_feature))

    @torch.no_grad()
    def autoregress(
        self,
        context: Tensor | None,
        solve: Callable[[int, Tensor, Tensor], None],
        like: Tensor,
    ) -> Tensor:
        r"""Solve for ``x`` feature by feature, each hidden unit computed once.

        For the feature of degree ``k`` (``k = 1..D``): its parameters ``(P, batch)`` come
        from the last hidden layer's units of degree below ``k``, then
        ``solve(i, params, out)`` writes ``x_i`` into ``out`` ``(batch,)``; then every
        hidden unit of degree ``k`` is computed, from the inputs and lower-layer units of
        degree at most ``k``, now all known. Same result as ``D`` full passes, for about the
        arithmetic of one. Without gradients (it writes its buffers in place).

        Every buffer is ``(1 + rows, batch)``: a row of ones, then the units sorted by degree
        (the first one also holds the context). The biases are the weight columns that meet
        the ones, so each step is one ``mm`` into a block of rows, with no bias to broadcast.

        Args:
            context: ``(batch, context_dim)``, or None for an unconditional MADE.
            solve: ``(feature index, params (P, batch), out (batch,)) -> None``.
            like: a tensor whose batch size, dtype and device ``x`` takes.

        Returns:
            ``x`` ``(batch, D)``.
        """
        if (context is None) != (self.context_dim == 0):
            raise ValueError(
                f"this MADE takes a context of width {self.context_dim}, got "
                f"{'none' if context is None else tuple(context.shape)}"
            )
        features, per, batch = self.features, self.params_per_feature, like.shape[0]
        order = self.degrees.argsort()  # the feature of degree k is order[k - 1]
        lead = 1 + (0 if context is None else self.context_dim)  # ones (and context) rows
        x = like.new_empty(lead + features, batch)  # ones, context, features by degree
        x[0] = 1
        if context is not None:
            x[1:lead] = context.T
        # The first layer's columns, as its buffer's rows: the bias (after the weights of the
        # features and the context), the context, the features by degree.
        inputs = features + self.context_dim
        context_columns = torch.arange(features, inputs, device=order.device)
        columns = torch.cat((order.new_tensor([inputs]), context_columns, order))
        buffers, steps = [x], []  # per hidden layer: weights [bias | sorted inputs], unit ends
        arange = torch.arange(features + 1, device=order.device)
        for layer in self.hidden:
            units = layer.unit_degrees.argsort(stable=True)
            weight = torch.cat((layer.weight * layer.mask, layer.bias[:, None]), dim=1)
            ends = torch.searchsorted(layer.unit_degrees[units], arange, right=True).tolist()
            steps.append((weight[units][:, columns], ends))
            columns = torch.cat((units.new_tensor([len(units)]), units))
            buffers.append(x.new_empty(1 + len(units), batch))
            buffers[-1][0] = 1
        output = torch.cat((self.output.weight * self.output.mask, self.output.bias[:, None]), 1)
        output = output[:, columns].view(features, per, -1)
        activations = [_in_place(a) for a in self.activations]

        def units_of_degree(k: int) -> None:
            known = lead + k  # the ones, the context and the inputs of degree <= k
            for i, ((weight, ends), activation) in enumerate(zip(steps, activations, strict=True)):
                start, end = 1 + (ends[k - 1] if k else 0), 1 + ends[k]
                if end > start:
                    block = buffers[i + 1][start:end]
                    torch.mm(weight[start - 1 : end - 1, :known], buffers[i][:known], out=block)
                    activation(block)
                    if self.residual and i > 0:
                        block.add_(buffers[i][start:end])
                known = end

        units_of_degree(0)  # units that see only the context
        last = buffers[-1]
        for k, feature in enumerate(order.tolist(), start=1):
            known = 1 + steps[-1][1][k - 1]
            solve(feature, output[feature, :, :known] @ last[:known], x[lead + k - 1])
            if k < features:
                units_of_degree(k)
        return x[lead:][self.degrees - 1].T


def _in_place(activation: nn.Module) -> Callable[[Tensor], None]:
    """``block <- activation(block)``, in place where the module can do it (a ReLU without
    the module call's overhead: it runs once per degree and layer)."""
    if isinstance(activation, nn.ReLU):
        return torch.relu_
    if getattr(activation, "inplace", False):
        return activation

    def apply(block: Tensor) -> None:
        block.copy_(activation(block))

    return apply
