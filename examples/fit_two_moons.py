"""Fit Real NVP to two moons from Python, evaluate it against the true density, plot, save.

python examples/fit_two_moons.py          # about a minute on a 2-core CPU

FLOWFORGE_EXAMPLE_SCALE=0.05 shrinks the data and the epochs (the test suite runs it so).
"""

import os

import flowforge as ff
from flowforge import plots

SCALE = float(os.environ.get("FLOWFORGE_EXAMPLE_SCALE", "1"))  # 1: the full example

n, epochs = max(1000, int(20_000 * SCALE)), max(1, int(100 * SCALE))
data = ff.datasets.load("two-moons", n=n, seed=0)  # deterministic train / val / test
flow = ff.models.realnvp(dim=2, layers=8, hidden=(64, 64))
history = ff.fit(flow, data.train, val=data.val, epochs=epochs, batch_size=256, lr=1e-3)
report = ff.evaluate(flow, data.test)  # mean test NLL in nats, with its standard error
print(report, f"| true entropy {data.entropy:.4f} | KL(p||q) ~ {report.nll - data.entropy:.4f}")

samples = flow.sample(1000)  # (1000, 2)
plots.plot_density_2d(flow, data.test.x, "runs/example/density.png", data.log_prob)
plots.plot_layers_2d(flow, data.test.x, "runs/example/layers.png")
plots.plot_losses(history.epochs, "runs/example/loss.png")
ff.save(flow, "runs/example")  # model.json + model.safetensors
assert (ff.load("runs/example").log_prob(samples) == flow.log_prob(samples)).all()
