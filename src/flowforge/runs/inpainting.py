"""Inpainting runs: fill the missing pixels of images with a trained flow as the prior."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowforge.datasets.base import Dataset, Split
from flowforge.flows import io
from flowforge.runs.config import (
    ConfigError,
)
from flowforge.runs.directory import _run_device, read_config
from flowforge.runs.setup import load_data


def read_images(spec: str, data: Dataset, shape: tuple[int, ...]) -> torch.Tensor:
    """Images to inpaint, as pixel values ``(B, *shape)``: ``spec`` is comma-separated indices
    into the test split (``"0,1,2"``), ``first:N`` for its first ``N`` images, or a ``.npy``
    file of pixel values of that shape (read without pickle)."""
    test = data.test.x.reshape(-1, *shape)
    if spec.endswith(".npy"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"image file {spec} does not exist")
        images = torch.from_numpy(np.load(path, allow_pickle=False)).to(torch.float32)
        images = images.reshape(-1, *shape) if images.numel() % math.prod(shape) == 0 else images
        if tuple(images.shape[1:]) != shape:
            raise ValueError(f"{spec}: expected images of shape (N, {shape}), got {images.shape}")
        return images
    try:
        if spec.startswith("first:"):
            indices = list(range(int(spec[len("first:") :])))
        else:
            indices = [int(i) for i in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"--image must be test-image indices such as 0,1,2, first:N, or a .npy file; "
            f"got {spec!r}"
        ) from None
    bad = [i for i in indices if not 0 <= i < len(test)]
    if bad or not indices:
        raise ValueError(f"test image indices must be in [0, {len(test)}), got {spec!r}")
    return test[indices]


def inpaint_run(
    run_dir: str | Path,
    images: str,
    mask: str,
    out: str | Path,
    *,
    restarts: int = 8,
    steps: int = 1000,
    lr: float = 0.1,
    seed: int = 0,
    baselines: bool = True,
) -> dict[str, Any]:
    """Inpaint images with a trained run's flow as the prior (`flowforge.inpaint()`).

    Observed pixels ``k`` sit at the centre of their dequantisation bin, ``(k + 0.5) / L``;
    ``mask`` is ``center``, ``top``, ``random50`` or a mask file (see
    `flowforge.applications.inpainting.make_mask()`). Writes ``inpainting.png`` (original, masked,
    inpainted and, with ``baselines``, the mean-image and Gaussian conditional-mean fills),
    ``inpainted.npy`` and ``inpainting.json`` (log p and PSNR of each method), into ``out``.
    """
    from flowforge import plots  # matplotlib loads only when a figure is drawn
    from flowforge.applications.inpainting import gaussian_fill, inpaint, make_mask, mean_fill, psnr

    run_dir, out = Path(run_dir), Path(out)
    config = read_config(run_dir)
    data, shape = load_data(config)
    if len(shape) != 3 or not data.test.discrete:
        raise ConfigError(f"inpainting needs an image dataset, but {config['data']!r} is not")
    flow = io.load(run_dir, device=_run_device(run_dir, config))
    levels = data.test.levels
    truth = (read_images(images, data, shape) + 0.5) / levels
    missing = make_mask(mask, shape, seed=seed).expand_as(truth)
    torch.manual_seed(seed)
    result = inpaint(flow, truth, missing, restarts=restarts, steps=steps, lr=lr, seed=seed)
    fills = {"flow": result.image}
    if baselines:
        train = Split(data.train.x.reshape(-1, *shape), levels=levels)
        fills["mean image"] = mean_fill(train, truth, missing, bounds=(0.0, 1.0))
        fills["Gaussian"] = gaussian_fill(train, truth, missing, bounds=(0.0, 1.0))
    report: dict[str, Any] = {"run": str(run_dir), "images": images, "mask": mask}
    for name, filled in fills.items():
        scores = psnr(filled, truth, missing)
        report[name] = {"psnr": scores.mean().item(), "psnr_per_image": scores.tolist()}
    # Did the optimiser do its job? The MAP fill should be at least as likely as the truth.
    with torch.no_grad():
        flow.eval()
        truth_log_prob = flow.log_prob(truth.to(flow.dtype).reshape(-1, *flow.event_shape))
    map_log_prob = result.log_prob.reshape(-1).to(truth_log_prob)
    report["flow"]["log_prob"] = map_log_prob.tolist()
    report["flow"]["truth_log_prob"] = truth_log_prob.tolist()
    report["flow"]["map_beats_truth"] = (map_log_prob >= truth_log_prob).float().mean().item()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "inpainted.npy", result.image.cpu().numpy())
    (out / "inpainting.json").write_text(json.dumps(report, indent=2) + "\n")
    plots.plot_inpainting(
        truth,
        missing,
        result.image,
        out / "inpainting.png",
        methods=[(name, fill) for name, fill in fills.items() if name != "flow"],
        labels=("original", "masked", f"{config['model']} prior"),
        title=f"{config['data']}: {mask} pixels missing",
    )
    return report
