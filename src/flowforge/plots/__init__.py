"""Figures of flows, their training and their inferences, written to image files.

Every ``plot_*`` function evaluates the flow under ``torch.no_grad()`` in eval mode (its
training mode is restored afterwards), in the flow's dtype and on its device, draws on a
standalone ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no backend switch,
nothing left open), creates the parent directories of ``path``, and returns the
``pathlib.Path`` written. The format follows the file's suffix (``.png`` if it has none).
Densities are in nats; bits/dim are shown where a history records them.
"""

from flowforge.plots.amortized import SIGMA_MASSES, plot_posteriors, plot_sbc, sbc_band
from flowforge.plots.common import ArrayLike, Bounds, default_bounds
from flowforge.plots.density import (
    layer_stages,
    plot_conditional_samples,
    plot_density_2d,
    plot_layers_2d,
    plot_losses,
    plot_samples_2d,
)
from flowforge.plots.images import (
    interpolate_latent,
    plot_image_grid,
    plot_inpainting,
    plot_interpolation,
    plot_samples_images,
)
from flowforge.plots.variational import plot_elbo, plot_vi_2d, plot_vi_grid, vi_density_panels

__all__ = [
    "SIGMA_MASSES",
    "ArrayLike",
    "Bounds",
    "default_bounds",
    "interpolate_latent",
    "layer_stages",
    "plot_conditional_samples",
    "plot_density_2d",
    "plot_elbo",
    "plot_image_grid",
    "plot_inpainting",
    "plot_interpolation",
    "plot_layers_2d",
    "plot_losses",
    "plot_posteriors",
    "plot_samples_2d",
    "plot_samples_images",
    "plot_sbc",
    "plot_vi_2d",
    "plot_vi_grid",
    "sbc_band",
    "vi_density_panels",
]
