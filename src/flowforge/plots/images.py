"""Figures of image models: grids of images and samples, latent interpolations, inpaintings."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowforge.flows.flow import Flow
from flowforge.plots.common import ArrayLike, _as_tensor, _evaluating, _figure, _numpy, _save


def _image_batch(images: ArrayLike) -> np.ndarray:
    """``(N, C, H, W)``, ``(N, H, W)`` or ``(N, s*s)`` images as ``(N, H, W, C)`` in [0, 1]."""
    batch = _numpy(images)
    if batch.ndim == 2:
        side = math.isqrt(batch.shape[1])
        if side * side != batch.shape[1]:
            raise ValueError(
                f"flat images (N, D) need D to be a perfect square, got D = {batch.shape[1]}"
            )
        batch = batch.reshape(-1, 1, side, side)
    elif batch.ndim == 3:
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1] not in (1, 3) or batch.shape[0] == 0:
        raise ValueError(
            "images must be (N, C, H, W) with C = 1 or 3, (N, H, W) or (N, s*s) with N >= 1,"
            f" got {tuple(np.shape(images))}"
        )
    return np.clip(np.nan_to_num(batch, nan=0.0), 0.0, 1.0).transpose(0, 2, 3, 1)


def _mosaic(batch: np.ndarray, columns: int, pad: int) -> np.ndarray:
    """Tile ``(N, H, W, C)`` images into one ``(rows*(H+pad)+pad, ...)`` image, grey gaps."""
    n, height, width, channels = batch.shape
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 0.5)
    for i, image in enumerate(batch):
        top = pad + (i // columns) * (height + pad)
        left = pad + (i % columns) * (width + pad)
        canvas[top : top + height, left : left + width] = image
    return canvas


def plot_image_grid(
    images: ArrayLike,
    path: str | os.PathLike,
    nrow: int | None = None,
    title: str | None = None,
) -> Path:
    """Images in a grid, ``nrow`` per row (default ``ceil(sqrt(N))``), without ticks.

    ``images`` is ``(N, C, H, W)`` with ``C = 1`` (grey) or ``3`` (RGB), ``(N, H, W)`` grey,
    or ``(N, D)`` with ``D = s*s`` (grey ``s`` x ``s``). Values are clipped to ``[0, 1]``
    (NaN shows as 0); images are separated by thin grey lines.
    """
    batch = _image_batch(images)
    columns = math.ceil(math.sqrt(len(batch))) if nrow is None else nrow
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    columns = min(columns, len(batch))
    mosaic = _mosaic(batch, columns, pad=max(1, batch.shape[1] // 14))
    width = float(np.clip(0.9 * columns, 3.0, 8.0))
    image_height = width * mosaic.shape[0] / mosaic.shape[1]
    title_height = 0.4 if title else 0.0
    figure = _figure(width, image_height + title_height, layout=None)
    axes = figure.add_axes((0.0, 0.0, 1.0, image_height / (image_height + title_height)))
    if mosaic.shape[2] == 1:
        axes.imshow(mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axes.imshow(mosaic, interpolation="nearest")
    axes.set_axis_off()
    if title:
        axes.set_title(title)
    return _save(figure, path)


def plot_samples_images(
    flow: Flow,
    path: str | os.PathLike,
    n: int = 64,
    temperature: float = 1.0,
    image_shape: Sequence[int] | None = None,
    levels: int | None = None,
) -> Path:
    """A grid of ``n`` images sampled from the flow at ``temperature`` (see `Flow.sample()`).

    A flow over flat vectors ``(D,)`` needs ``image_shape`` ``(C, H, W)`` unless ``D`` is a
    perfect square (grey). Samples live in the model space ``[0, 1]`` of dequantised data and
    are clipped to it; with ``levels`` ``L`` (e.g. 256) they are also rounded down to the
    data's discrete levels ``k = floor(L x)`` and shown as ``k / (L - 1)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    with _evaluating(flow):
        samples = flow.sample(n, temperature=temperature)
    samples = _numpy(samples)
    if image_shape is not None:
        samples = samples.reshape(n, *image_shape)
    elif samples.ndim == 2 and math.isqrt(samples.shape[1]) ** 2 != samples.shape[1]:
        raise ValueError(
            f"samples are vectors of {samples.shape[1]} values, not a square image;"
            " pass image_shape=(C, H, W)"
        )
    clipped = float(np.mean((samples < 0) | (samples > 1) | np.isnan(samples)))
    if levels is not None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
        samples = np.minimum(np.floor(np.clip(samples, 0, 1) * levels), levels - 1)
        samples = samples / (levels - 1)
    title = f"{n} samples at temperature T = {temperature:g}"
    if clipped > 0:
        title += f" ({100 * clipped:.1f}% of values clipped to [0, 1])"
    return plot_image_grid(samples, path, title=title)


def interpolate_latent(flow: Flow, start: Tensor, end: Tensor, steps: int = 8) -> Tensor:
    r"""Images along the straight line between the latents of ``start`` and ``end``:

    $$
    z_a = f(x_a),\ z_b = f(x_b),\quad x_t = f^{-1}\big((1 - t) z_a + t z_b\big),
    \quad t = 0, \tfrac1{n-1}, \dots, 1
    $$

    ``start`` and ``end`` are ``(P, *event_shape)`` pairs of images in model space; returns
    ``(P, steps, *event_shape)``, with ``x_0 = x_a`` and ``x_1 = x_b`` up to round-off.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    start, end = _as_tensor(start, flow), _as_tensor(end, flow)
    if start.shape != end.shape:
        raise ValueError(f"start and end must have one shape, got {start.shape} and {end.shape}")
    with _evaluating(flow), torch.no_grad():
        z_a, _ = flow.transform(start)
        z_b, _ = flow.transform(end)
        t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device)
        t = t.view(1, steps, *([1] * (z_a.dim() - 1)))
        z = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)
        x = flow.transform.map_inverse(z.flatten(0, 1))
    return x.reshape(start.shape[0], steps, *start.shape[1:])


def plot_interpolation(
    flow: Flow,
    start: ArrayLike,
    end: ArrayLike,
    path: str | os.PathLike,
    steps: int = 8,
    image_shape: Sequence[int] | None = None,
) -> Path:
    """One row per pair: the images on the line between the latents of ``start[i]`` and
    ``end[i]`` (`interpolate_latent()`), from ``start[i]`` on the left to ``end[i]``."""
    path_images = interpolate_latent(flow, start, end, steps)
    images = _numpy(path_images.flatten(0, 1))
    if image_shape is not None:
        images = images.reshape(-1, *image_shape)
    title = "interpolation in latent space"
    return plot_image_grid(images, path, nrow=steps, title=title)


def plot_inpainting(
    original: ArrayLike,
    mask: ArrayLike,
    inpainted: ArrayLike,
    path: str | os.PathLike,
    *,
    methods: Sequence[tuple[str, ArrayLike]] = (),
    labels: Sequence[str] = ("original", "masked", "inpainted"),
    missing_colour: str = "red",
    title: str | None = None,
) -> Path:
    """The NICE paper's inpainting figure (Dinh et al. 2014, figure 4): one column per image.

    Rows, each labelled on the left: the ``original`` images; the same images with their
    missing pixels (``mask`` True or nonzero) painted in ``missing_colour`` (any matplotlib
    colour name, named in the row's label); the ``inpainted`` images; then one row per
    ``(label, images)`` pair of ``methods`` (e.g. baselines). Images are ``(N, C, H, W)`` with
    ``C = 1`` or ``3``, ``(N, H, W)`` or ``(N, s*s)`` as for `plot_image_grid()`, all of the
    same shape, clipped to ``[0, 1]``; ``mask`` has their shape or one image's shape, and a
    position is shown missing when any of its channels is.
    """
    from matplotlib.colors import to_rgb

    if len(labels) != 3:
        raise ValueError(
            f"labels must name the 3 rows (original, masked, inpainted), got {labels!r}"
        )
    shape = np.shape(original)
    missing = _numpy(mask) != 0
    if missing.shape not in (shape, shape[1:]):
        raise ValueError(
            f"mask must have the images' shape {shape} or one image's {shape[1:]},"
            f" got {missing.shape}"
        )
    missing = _image_batch(np.broadcast_to(missing, shape).astype(float)).max(axis=-1) > 0
    rows = [(labels[0], original), (labels[1], original), (labels[2], inpainted), *methods]
    batches = []
    for label, images in rows:
        batch = _image_batch(images)
        if batch.shape[:3] != missing.shape:
            raise ValueError(
                f"the {label!r} images have shape {np.shape(images)}; expected that of the"
                f" originals, {shape}"
            )
        batches.append(np.repeat(batch, 3, axis=-1) if batch.shape[-1] == 1 else batch)
    batches[1] = np.where(missing[..., None], np.array(to_rgb(missing_colour)), batches[1])
    rows[1] = (f"{labels[1]}\n(missing: {missing_colour})", None)
    columns = len(missing)
    mosaics = [_mosaic(batch, columns, pad=max(1, batch.shape[1] // 14)) for batch in batches]
    label_width, title_height = 1.3, 0.4 if title else 0.1
    image_width = float(np.clip(0.8 * columns, 3.0, 12.0))
    row_height = image_width * mosaics[0].shape[0] / mosaics[0].shape[1]
    width, height = label_width + image_width, len(rows) * row_height + title_height
    figure = _figure(width, height, layout=None)
    for i, ((label, _), mosaic) in enumerate(zip(rows, mosaics, strict=True)):
        bottom = (height - title_height - (i + 1) * row_height) / height
        axes = figure.add_axes(
            (label_width / width, bottom, image_width / width, row_height / height)
        )
        axes.imshow(mosaic, interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        for spine in axes.spines.values():
            spine.set_visible(False)
        axes.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        figure.suptitle(title, y=1 - 0.05 / height, va="top")
    return _save(figure, path)
