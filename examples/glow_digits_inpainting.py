"""Fit Glow to the 8x8 digits, sample at a temperature, interpolate, and inpaint.

python examples/glow_digits_inpainting.py      # about two minutes on a 2-core CPU

FLOWFORGE_EXAMPLE_SCALE=0.02 shrinks the epochs and the optimisation steps (the test suite
runs it so).
"""

import os

import flowforge as ff
from flowforge import inpainting, plots

SCALE = float(os.environ.get("FLOWFORGE_EXAMPLE_SCALE", "1"))  # 1: the full example

data = ff.datasets.load("digits")  # (N, 1, 8, 8) pixel values 0..16, levels 17
flow = ff.models.glow((1, 8, 8), levels=2, steps=8, channels=64)
ff.fit(flow, data.train, val=data.val, epochs=max(1, int(100 * SCALE)), batch_size=128, lr=1e-3)
print(ff.evaluate(flow, data.test))  # NLL in nats per image in [0, 1] and bits/dim

plots.plot_samples_images(flow, "runs/example-glow/samples.png", n=64, temperature=0.7)
images = data.test.dequantize(data.test.x[:12])  # model space: (k + u) / 17 in [0, 1]
plots.plot_interpolation(flow, images[0::2], images[1::2], "runs/example-glow/interpolation.png")

truth = (data.test.x[:8] + 0.5) / 17  # observed pixels at the centre of their bins
missing = inpainting.make_mask("top", (1, 8, 8)).expand_as(truth)  # True = missing
steps = max(10, int(1000 * SCALE))
result = ff.inpaint(flow, truth, missing, restarts=8, steps=steps)  # MAP under the flow
baseline = inpainting.gaussian_fill(data.train, truth, missing, bounds=(0.0, 1.0))
print(
    f"PSNR flow {inpainting.psnr(result.image, truth, missing).mean():.2f} dB, "
    f"Gaussian {inpainting.psnr(baseline, truth, missing).mean():.2f} dB"
)
plots.plot_inpainting(
    truth,
    missing,
    result.image,
    "runs/example-glow/inpainting.png",
    methods=[("Gaussian", baseline)],
)
