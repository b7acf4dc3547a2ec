"""The opt-in torch.compile path: coupling, spline and autoregressive flows trace as single
graphs (no graph breaks) in log_prob, with the NaN check off (it syncs on a tensor's value)."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff

FLOWS = {
    "realnvp": lambda: ff.models.realnvp(4, layers=2, hidden=(8,)),
    "nice": lambda: ff.models.nice(4, layers=2, hidden=(8,)),
    "nsf": lambda: ff.models.nsf(4, layers=2, hidden=(8,)),
    "maf": lambda: ff.models.maf(4, layers=2, hidden=(8,)),
    "nsf-conditional": lambda: ff.models.nsf(4, layers=2, hidden=(8,), context_dim=2),
}


@pytest.mark.parametrize("name", FLOWS)
def test_log_prob_has_no_graph_breaks(name):
    flow = FLOWS[name]()
    flow.validate_args = False
    x = torch.randn(16, 4)
    context = torch.randn(16, 2) if "conditional" in name else None
    torch._dynamo.reset()
    explained = torch._dynamo.explain(flow.log_prob)(x, context)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.parametrize(
    "build",
    [
        lambda: ff.models.realnvp(4, layers=2, hidden=(8,), actnorm=True),
        lambda: ff.models.nice(4, layers=2, hidden=(8,), scale_init="data"),
    ],
    ids=["realnvp-actnorm", "nice-scale-from-data"],
)
def test_a_layer_initialised_from_data_has_no_graph_break_once_initialised(build):
    flow = build()
    flow.validate_args = False
    x = torch.randn(16, 4)
    flow.log_prob(x)  # the first, eager call initialises from the batch
    torch._dynamo.reset()
    explained = torch._dynamo.explain(flow.log_prob)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
