"""Inference with flows: unnormalised targets, variational fitting, its diagnostics, simulators
with known posteriors and the calibration checks of an amortized posterior."""
