r"""Inpainting with a flow as the prior (NICE, Dinh et al. 2014, section 5.2).

Some pixels of an image are missing. A flow that models $p(x)$ fills them in by
maximising the density over the missing pixels $x_m$ with the observed ones $x_o$
held fixed,

$$
x_m^* = \arg\max_{x_m} \log p(x_o, x_m),
$$

which is also the mode of $p(x_m \mid x_o) \propto p(x_o, x_m)$. For a flow the objective
is not concave, so `inpaint()` climbs it by gradient ascent from several starting points
and keeps the best. Two references that need no flow: `mean_fill()` (the training mean of
each pixel) and `gaussian_fill()` (the conditional mean of a full-covariance Gaussian fitted
to the training images, the exact answer when the data are Gaussian). `psnr()` scores a
filled image on its missing pixels.

Masks are boolean tensors of an image's shape, True where a pixel is MISSING; see
`make_mask()`. Images are in the model space of the data ($x = (k + u)/L \in [0, 1]$
for pixels, see `Split`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowforge.datasets.base import Split
from flowforge.flows.flow import Flow

MASK_KINDS = ("center", "top", "random50")
Bounds = tuple[float, float]


# --- masks ---------------------------------------------------------------------------------


def make_mask(kind: str | os.PathLike, shape: Sequence[int], seed: int = 0) -> Tensor:
    """A boolean mask of the image shape ``(C, H, W)``, True where a pixel is MISSING.

    ``kind``:

    - ``"center"``: the central square of half the height and half the width (a quarter of the
      pixels when ``H`` and ``W`` are even), in every channel;
    - ``"top"``: the top ``H // 2`` rows;
    - ``"random50"``: each pixel position missing with probability 1/2, independently, from
      ``seed``; all channels of a position share its fate;
    - a path to a ``.npy`` file (read with ``allow_pickle=False``) or a ``.png`` file (read with
      matplotlib; the alpha channel is ignored): nonzero (any colour channel) means missing,
      and its shape must be ``(H, W)`` (used for every channel), ``(1, H, W)`` or ``(C, H, W)``.
    """
    shape = _image_shape(shape)
    _, height, width = shape
    mask = torch.zeros(shape, dtype=torch.bool)
    if kind == "center":
        rows, columns = height // 2, width // 2
        top, left = (height - rows) // 2, (width - columns) // 2
        mask[:, top : top + rows, left : left + columns] = True
    elif kind == "top":
        mask[:, : height // 2] = True
    elif kind == "random50":
        generator = torch.Generator().manual_seed(seed)
        mask[:] = torch.rand((height, width), generator=generator) < 0.5
    elif isinstance(kind, str | os.PathLike):
        mask = _read_mask(Path(kind), shape)
    else:
        raise ValueError(
            f"unknown mask {kind!r}; expected one of {MASK_KINDS} or a .npy or .png file"
        )
    return mask


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(shape)
    if len(shape) != 3 or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(
            f"shape must be an image shape (C, H, W) of positive integers, got {shape}"
        )
    return tuple(int(s) for s in shape)


def _read_mask(path: Path, shape: tuple[int, int, int]) -> Tensor:
    """A mask file as a ``shape`` boolean tensor (see `make_mask()`)."""
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".png"):
        raise ValueError(
            f"unknown mask {str(path)!r}; expected one of {MASK_KINDS} or a .npy or .png file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        from matplotlib.image import imread

        array = imread(path)
        if array.ndim == 3:  # (H, W, channels): drop alpha, missing where any colour is set
            colours = array[..., :-1] if array.shape[-1] in (2, 4) else array
            array = np.abs(colours).max(axis=-1)
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"mask file {path} holds {array.dtype} values; expected numbers or bools")
    channels, height, width = shape
    if array.shape not in ((height, width), (1, height, width), (channels, height, width)):
        raise ValueError(
            f"mask file {path} has shape {array.shape}; expected (H, W) = ({height}, {width})"
            f" or (C, H, W) = {shape}"
        )
    missing = torch.from_numpy(np.asarray(array != 0))
    return missing.expand(shape).clone()


# --- inpainting with a flow ----------------------------------------------------------------


@dataclass(frozen=True)
class Inpainting:
    """The result of `inpaint()`, for ``B`` images and ``R`` restarts.

    Attributes:
        image: the inpainted images, of the input's shape; equal to the input at every
            observed pixel.
        log_prob: $\\log p$ of each result in nats, ``(B,)`` (a scalar for one image).
        history: the best $\\log p$ found so far at each step, ``(steps + 1, B)``
            (``(steps + 1,)`` for one image); row 0 is the best starting point.
        restart_log_prob: the best $\\log p$ each restart reached, ``(B, R)``.
        start_log_prob: $\\log p$ of each restart's starting point, ``(B, R)``.
        best_restart: the restart kept for each image, ``(B,)``.
    """

    image: Tensor
    log_prob: Tensor
    history: Tensor | None = None
    restart_log_prob: Tensor | None = None
    start_log_prob: Tensor | None = None
    best_restart: Tensor | None = None


def inpaint(
    flow: Flow,
    image: Tensor,
    mask: Tensor,
    *,
    restarts: int = 8,
    steps: int = 1000,
    lr: float = 0.1,
    bounds: Bounds | None = (0.0, 1.0),
    seed: int = 0,
    context: Tensor | None = None,
) -> Inpainting:
    r"""Fill the missing pixels of ``image`` with the flow's most likely values.

    $$
    x_m^* = \arg\max_{x_m} \log p(x_o, x_m)
    $$

    with the observed pixels $x_o$ fixed (``mask`` True = missing). The missing values
    are $x_m = lo + (hi - lo)\,\sigma(\theta)$ for ``bounds = (lo, hi)`` (or
    $\theta$ itself for ``bounds=None``), and $\theta$ is optimised by Adam on
    $-\log p(x)$ for ``steps`` steps at the constant learning rate ``lr``. Every image is
    climbed from ``restarts`` starting points, all in one batch of ``B * restarts``: restart 0
    sets every missing pixel to the mean of the image's observed pixels, the others draw them
    at random (from ``seed``): uniformly within the bounds, or without bounds from a normal
    with the observed pixels' mean and standard deviation. Each restart keeps the best point
    it visited, and each image the restart with the highest $\log p$; so the result is
    never less likely than any starting point. Convergence slows where the posterior of the
    missing pixels is badly conditioned: check ``history`` and raise ``steps`` if it still
    climbs at the end.

    Shapes: ``image`` is one image of the flow's event shape or a batch ``(B, *event_shape)``.
    An image of another shape with as many elements as one event (e.g. ``(1, 28, 28)`` for a
    flow over vectors ``(784,)``) is reshaped for the flow and the result returned in the
    image's shape; a tensor with as many elements as one event is one image, otherwise the
    first dimension is the batch. ``mask`` is a boolean tensor of the image's shape, or of one
    image's shape for the whole batch. ``image`` holds floating values (NaN is allowed at
    missing pixels); the result keeps its dtype and device, and is built with
    ``torch.where(mask, filled, image)``, so the observed pixels are returned exactly.
    ``context`` (``(B, k)``, or ``(k,)`` for one image) conditions a conditional flow.

    The flow is put in eval mode and its parameters stop requiring gradients during the call;
    both are restored afterwards, and the parameters are not changed.
    """
    _check_count("restarts", restarts, 1)
    _check_count("steps", steps, 0)
    if (
        isinstance(lr, bool)
        or not isinstance(lr, int | float)
        or not (lr > 0 and math.isfinite(lr))
    ):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    bounds = _check_bounds(bounds)
    for module in flow.modules():
        flag = getattr(module, "initialized", None)
        if isinstance(flag, torch.Tensor) and not bool(flag):
            raise ValueError(
                f"the flow has a {type(module).__name__} layer that was never initialised; "
                "train the flow (or run it on data) before inpainting with it"
            )
    event_shape = torch.Size(flow.event_shape)
    image_shape, batched = _batch_layout(image, event_shape, "image")
    missing = _check_mask(mask, image, image_shape, batched)
    x = image.reshape(-1, math.prod(event_shape))
    missing = missing.reshape(x.shape)
    batch, size = x.shape
    if context is not None:
        if not isinstance(context, Tensor):
            raise TypeError(f"context must be a torch.Tensor, got {type(context).__name__}")
        context = context.reshape(batch, -1).to(dtype=flow.dtype, device=flow.device)
        context = context.repeat_interleave(restarts, 0)

    dtype, device = flow.dtype, flow.device
    observed = torch.where(missing, 0.0, x).to(dtype=dtype, device=device)
    theta = _starts(x, missing, restarts, bounds, seed).to(dtype=dtype, device=device)
    theta = theta.reshape(batch * restarts, size).requires_grad_(True)
    rows_missing = missing.to(device).repeat_interleave(restarts, 0)
    rows_observed = observed.repeat_interleave(restarts, 0)

    def fill(theta: Tensor) -> Tensor:
        if bounds is None:
            return theta
        low, high = bounds
        return low + (high - low) * torch.sigmoid(theta)

    def log_prob(theta: Tensor) -> Tensor:
        values = torch.where(rows_missing, fill(theta), rows_observed)
        return flow.log_prob(values.reshape(-1, *event_shape), context)

    parameters = list(flow.parameters())
    requires_grad = [p.requires_grad for p in parameters]
    modes = [(module, module.training) for module in flow.modules()]
    try:
        flow.eval()
        for p in parameters:
            p.requires_grad_(False)
        optimizer = torch.optim.Adam([theta], lr=lr)
        best = torch.full((batch * restarts,), -math.inf, dtype=dtype, device=device)
        best_theta = theta.detach().clone()
        history = []
        with torch.enable_grad():
            for step in range(steps + 1):
                if step == steps:
                    with torch.no_grad():
                        value = log_prob(theta)
                else:
                    value = log_prob(theta)
                with torch.no_grad():
                    score = torch.nan_to_num(value.detach(), nan=-math.inf)
                    if step == 0:
                        start = score.clone()
                    better = score > best
                    best = torch.where(better, score, best)
                    best_theta = torch.where(better[:, None], theta.detach(), best_theta)
                    history.append(best.view(batch, restarts).max(1).values)
                if step == steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                (-value.sum()).backward()
                theta.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                optimizer.step()
        with torch.no_grad():
            chosen = best.view(batch, restarts).argmax(1)
            winner = best_theta.view(batch, restarts, size)[
                torch.arange(batch, device=device), chosen
            ]
            filled = fill(winner).to(dtype=image.dtype, device=image.device)
            result = torch.where(missing.to(image.device), filled, x).reshape(image.shape)
            final = result.reshape(batch, *event_shape).to(dtype=dtype, device=device)
            final_log_prob = flow.log_prob(final, None if context is None else context[::restarts])
    finally:
        for p, flag in zip(parameters, requires_grad, strict=True):
            p.requires_grad_(flag)
        for module, training in modes:  # each submodule's own mode, as it was
            module.training = training

    history = torch.stack(history)
    restart_log_prob = best.view(batch, restarts)
    start = start.view(batch, restarts)
    if not batched:
        final_log_prob, history = final_log_prob[0], history[:, 0]
        restart_log_prob, start, chosen = restart_log_prob[0], start[0], chosen[0]
    return Inpainting(result, final_log_prob, history, restart_log_prob, start, chosen)


def _starts(x: Tensor, missing: Tensor, restarts: int, bounds: Bounds | None, seed: int) -> Tensor:
    """Starting values of ``theta`` ``(B, restarts, D)`` in float64 on the CPU (see
    `inpaint()`)."""
    generator = torch.Generator().manual_seed(seed)
    x = x.detach().to(device="cpu", dtype=torch.float64)
    missing = missing.cpu()
    batch, size = x.shape
    seen = (~missing).sum(1)
    values = torch.where(missing, 0.0, x)
    mean = values.sum(1) / seen.clamp(min=1)
    variance = torch.where(missing, 0.0, (x - mean[:, None]) ** 2).sum(1) / seen.clamp(min=1)
    if bounds is None:
        mean = torch.where(seen > 0, mean, 0.0)
        std = torch.where(variance > 0, variance.sqrt(), 1.0)
        noise = torch.randn((batch, restarts, size), generator=generator, dtype=torch.float64)
        theta = mean[:, None, None] + std[:, None, None] * noise
        theta[:, 0] = mean[:, None]
        return theta
    low, high = bounds
    fraction = torch.rand((batch, restarts, size), generator=generator, dtype=torch.float64)
    centre = torch.where(seen > 0, (mean - low) / (high - low), 0.5)
    fraction[:, 0] = centre[:, None]
    return torch.logit(fraction.clamp(1e-3, 1 - 1e-3))


# --- baselines -------------------------------------------------------------------------------


def mean_fill(
    train_x: Tensor | Split, image: Tensor, mask: Tensor, *, bounds: Bounds | None = None
) -> Tensor:
    """Every missing pixel set to the mean of that pixel over the training images.

    ``train_x`` is ``(N, *shape)`` in model space, or a `Split` (discrete data are
    dequantised with a fixed seed, as `GaussianBaseline` does);
    ``image`` and ``mask`` are shaped as for `inpaint()` with ``shape`` as the event shape.
    ``bounds`` ``(lo, hi)`` clamps the filled values. Observed pixels are returned exactly.
    """
    train = _training_matrix(train_x)
    x, missing = _baseline_inputs(train_x, train, image, mask)
    filled = train.mean(0).expand_as(x)
    return _combine(filled, missing, image, _check_bounds(bounds))


def gaussian_fill(
    train_x: Tensor | Split,
    image: Tensor,
    mask: Tensor,
    eps: float = 1e-3,
    *,
    bounds: Bounds | None = None,
) -> Tensor:
    r"""Every missing pixel set to its conditional mean under a Gaussian fitted to the training
    images.

    In float64, on the flattened training images (``train_x`` as for `mean_fill()`):
    $\mu = \bar x$, $\Sigma = \frac1N \sum_i (x_i - \mu)(x_i - \mu)^\top + \epsilon I$,
    and for the missing part $m$ and the observed part $o$ of an image

    $$
    x_m = \mu_m + \Sigma_{mo} \Sigma_{oo}^{-1} (x_o - \mu_o),
    $$

    which is both the mean and the mode of the Gaussian's $p(x_m \mid x_o)$, the
    Gaussian counterpart of `inpaint()`. Images of a batch may have different masks; those
    with the same mask share one Cholesky factorisation of $\Sigma_{oo}$. An image with no
    observed pixel gets $\mu$. ``bounds`` ``(lo, hi)`` clamps the filled values. Observed
    pixels are returned exactly.
    """
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not (eps >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    train = _training_matrix(train_x)
    x, missing = _baseline_inputs(train_x, train, image, mask)
    mean = train.mean(0)
    centred = train - mean
    covariance = centred.T @ centred / train.shape[0]
    covariance = covariance + eps * torch.eye(train.shape[1], dtype=torch.float64)
    x = x.to(torch.float64)
    filled = mean.expand_as(x).clone()
    patterns, group = torch.unique(missing, dim=0, return_inverse=True)
    for g, pattern in enumerate(patterns):
        seen = ~pattern
        if not pattern.any() or not seen.any():
            continue
        rows = (group == g).nonzero().squeeze(1)
        try:
            factor = torch.linalg.cholesky(covariance[seen][:, seen])
        except torch.linalg.LinAlgError:
            raise ValueError(
                "the covariance of the observed pixels is singular (constant pixels?); use eps > 0"
            ) from None
        residual = (x[rows][:, seen] - mean[seen]).T
        weights = torch.cholesky_solve(residual, factor)
        block = filled[rows]
        block[:, pattern] = (mean[pattern][:, None] + covariance[pattern][:, seen] @ weights).T
        filled[rows] = block
    return _combine(filled, missing, image, _check_bounds(bounds))


def _training_matrix(train_x: Tensor | Split) -> Tensor:
    """The training images as an ``(N, D)`` float64 matrix in model space."""
    if isinstance(train_x, Split):
        x = train_x.dequantize(train_x.x, torch.Generator().manual_seed(0))
    elif isinstance(train_x, Tensor):
        x = train_x
    else:
        raise TypeError(f"train_x must be a torch.Tensor or a Split, got {type(train_x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"train_x must be (N, *shape) with N >= 1, got {tuple(x.shape)}")
    x = x.detach().cpu().reshape(x.shape[0], -1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("train_x contains NaN or infinite values; expected finite numbers")
    return x


def _baseline_inputs(
    train_x: Tensor | Split, train: Tensor, image: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """``image`` and ``mask`` as ``(B, D)`` CPU tensors, after checking them."""
    event_shape = train_x.event_shape if isinstance(train_x, Split) else train_x.shape[1:]
    image_shape, batched = _batch_layout(image, torch.Size(event_shape), "image")
    missing = _check_mask(mask, image, image_shape, batched)
    size = train.shape[1]
    return image.detach().cpu().reshape(-1, size), missing.cpu().reshape(-1, size)


def _combine(filled: Tensor, missing: Tensor, image: Tensor, bounds: Bounds | None) -> Tensor:
    """``image`` with its missing pixels taken from ``filled`` ``(B, D)``, clamped to bounds."""
    if bounds is not None:
        filled = filled.clamp(*bounds)
    filled = filled.to(dtype=image.dtype).reshape(image.shape).to(image.device)
    return torch.where(missing.reshape(image.shape).to(image.device), filled, image)


# --- scores ------------------------------------------------------------------------------------


def psnr(estimate: Tensor, truth: Tensor, mask: Tensor, peak: float = 1.0) -> Tensor:
    r"""Peak signal-to-noise ratio on the missing pixels, in dB, one value per image:

    $$
    10 \log_{10} \frac{\text{peak}^2}{\frac1{|m|} \sum_{i \in m} (\hat x_i - x_i)^2}
    $$

    ``estimate`` and ``truth`` are batches ``(B, ...)`` of the same shape; ``mask`` (True =
    missing) has that shape or one image's shape. Returns ``(B,)`` float64: ``inf`` where the
    missing pixels are exact, NaN for an image with no missing pixel. Observed pixels are
    ignored (they may hold anything, NaN included).
    """
    for name, value in (("estimate", estimate), ("truth", truth), ("mask", mask)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if estimate.shape != truth.shape or estimate.dim() < 2:
        raise ValueError(
            "estimate and truth must be batches (B, ...) of the same shape, got"
            f" {tuple(estimate.shape)} and {tuple(truth.shape)}"
        )
    if mask.dtype != torch.bool or mask.shape not in (estimate.shape, estimate.shape[1:]):
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(estimate.shape)} or"
            f" {tuple(estimate.shape[1:])}, got {mask.dtype} {tuple(mask.shape)}"
        )
    mask = mask.to(estimate.device).expand(estimate.shape)
    error = (estimate.to(torch.float64) - truth.to(torch.float64).to(estimate.device)) ** 2
    total = torch.where(mask, error, 0.0).flatten(1).sum(1)
    mse = total / mask.flatten(1).sum(1)
    return 10 * torch.log10(peak**2 / mse)


# --- argument checks ---------------------------------------------------------------------------


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_bounds(bounds: object) -> Bounds | None:
    if bounds is None:
        return None
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be (low, high) or None, got {bounds!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"bounds must be finite numbers with low < high, got {bounds!r}")
    return low, high


def _batch_layout(x: Tensor, event_shape: torch.Size, name: str) -> tuple[torch.Size, bool]:
    """The shape of one image of ``x``, and whether ``x`` has a leading batch dimension.

    ``x`` ending with the event shape has at most one batch dimension; otherwise a tensor with
    as many elements as one event is one image, and anything else a batch of such images.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must hold floating model-space values, got {x.dtype}; for pixels k of L"
            " levels pass (k + 0.5) / L"
        )
    size, k = math.prod(event_shape), len(event_shape)
    if x.shape == event_shape:
        return event_shape, False
    if x.dim() == k + 1 and x.shape[1:] == event_shape:
        return event_shape, True
    if x.numel() == size and x.dim() >= 1:
        return x.shape, False
    if x.dim() >= 2 and math.prod(x.shape[1:]) == size and x.shape[0] >= 1:
        return x.shape[1:], True
    shape = ", ".join(map(str, event_shape))
    raise ValueError(
        f"{name} has shape {tuple(x.shape)}; expected ({shape}), (B, {shape}) or another shape"
        f" of {size} elements per image with an optional leading batch dimension"
    )


def _check_mask(mask: Tensor, image: Tensor, image_shape: torch.Size, batched: bool) -> Tensor:
    """``mask`` expanded to the image's shape, after checking it and the observed pixels."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a bool tensor (True = missing), got {mask.dtype}; use mask != 0"
        )
    if mask.shape not in (image.shape, image_shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; expected the image's {tuple(image.shape)}"
            f" or one image's {tuple(image_shape)}"
        )
    mask = mask.to(image.device).expand(image.shape)
    per_image = mask.reshape(image.shape[0] if batched else 1, -1)
    empty = (~per_image.any(1)).nonzero().flatten()
    if len(empty):
        which = f"image {int(empty[0])} of the batch" if batched else "the image"
        raise ValueError(f"mask has no missing pixel for {which}; nothing to inpaint")
    observed = image.detach()[~mask]
    if not torch.isfinite(observed).all():
        raise ValueError(
            f"image has {int((~torch.isfinite(observed)).sum())} NaN or infinite values at"
            " observed pixels; only missing pixels may be NaN"
        )
    return mask
