"""What fusing a layer's forward and backward buys on the training steps of cases A and C.

The README's speed table leaves A (Real NVP 2-D) and C (MAF 64-D) short of their target,
and the obvious remedy is fewer, larger operations. This script measures two versions:

- **A: one C++ function per affine coupling.** The conditioner MLP (ReLU hidden layers),
  the bounded affine map ``z_B = x_B e^s + t, s = B tanh(s_hat / B)`` and the
  log-determinant ``sum s`` run in one C++ call (ATen operations, compiled on first use by
  ``torch.utils.cpp_extension.load_inline``: it needs a C++ compiler and ninja), and the
  backward in another, so autograd sees one node per coupling instead of about 25 and no
  Python runs between the operations. The backward is written out:
  ``dL/dx_B = g e^s``, ``dL/ds = g x_B e^s + dL/d(logdet)``,
  ``dL/ds_hat = dL/ds (1 - (s/B)^2)``, then the MLP's chain rule.
- **C: one autograd Function per MADE** (Python, no compiler): the masked weights, the
  three products and the two ReLUs, with a backward that masks the ReLU gradients in place
  (``threshold_backward`` into the product it came from) and the weight gradients in place,
  so no activation-sized tensor is allocated for them.

For each case it times flowforge's eager training step, the fused one and the fastest peer
of the README's table (normflows, on both) in the same interleaved rounds, as
``python -m benchmarks`` does (``harness.training_step``: Adam, fused, for all), after a
check that the fused model's loss and gradients equal the eager one's:

    python -m benchmarks.fused [--cases A C] [--rounds 20] [--warmup 3] [--threads 2]

It prints a markdown table and writes ``benchmarks/fused.json``; where the C++ coupling
does not build (no compiler or ninja), case A is skipped with a line that says why. These
are measurements, not features: flowforge's layers stay as they are (the README says why).
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import torch
from torch import Tensor, nn

from flowforge.nn.made import MADE
from flowforge.nn.mlp import MLP
from flowforge.transforms.coupling import AffineCoupling

from . import flowforge_models, peers
from .harness import Subject, interleaved, training_step

COUPLING_SOURCE = r"""
#include <torch/extension.h>
#include <vector>
using at::Tensor;

// Forward of an affine coupling whose conditioner is an MLP with ReLU hidden layers.
// Returns {z_B, logdet, s, exp(s), h_1, ..., h_L} (the rest is saved for the backward).
std::vector<Tensor> coupling_forward(const Tensor& x_a, const Tensor& x_b,
                                     const std::vector<Tensor>& weights,
                                     const std::vector<Tensor>& biases, double bound) {
  const size_t layers = weights.size();
  std::vector<Tensor> hidden;
  Tensor h = x_a;
  for (size_t l = 0; l + 1 < layers; ++l) {
    h = at::addmm(biases[l], h, weights[l].t()).relu_();
    hidden.push_back(h);
  }
  const Tensor params = at::addmm(biases[layers - 1], h, weights[layers - 1].t());
  const int64_t changed = x_b.size(1);
  const Tensor s = at::tanh(params.narrow(1, 0, changed) * (1.0 / bound)).mul_(bound);
  const Tensor e = at::exp(s);
  std::vector<Tensor> out{at::addcmul(params.narrow(1, changed, changed), x_b, e), s.sum(1),
                          s, e};
  out.insert(out.end(), hidden.begin(), hidden.end());
  return out;
}

// Backward: {dL/dx_A, dL/dx_B, dL/dW_1..L, dL/db_1..L}.
std::vector<Tensor> coupling_backward(const Tensor& grad_z, const Tensor& grad_logdet,
                                      const Tensor& x_a, const Tensor& x_b, const Tensor& s,
                                      const Tensor& e, const std::vector<Tensor>& hidden,
                                      const std::vector<Tensor>& weights, double bound) {
  const size_t layers = weights.size();
  const Tensor grad_x_b = grad_z * e;
  const Tensor grad_s = at::addcmul(grad_logdet.unsqueeze(1), grad_x_b, x_b);
  const Tensor grad_raw = grad_s * (1 - (s * (1.0 / bound)).square());
  Tensor g = at::cat({grad_raw, grad_z}, 1);
  std::vector<Tensor> grad_w(layers), grad_b(layers);
  for (size_t l = layers; l-- > 0;) {
    const Tensor& input = l == 0 ? x_a : hidden[l - 1];
    grad_w[l] = g.t().mm(input);
    grad_b[l] = g.sum(0);
    Tensor grad_h = g.mm(weights[l]);
    g = l == 0 ? grad_h : at::threshold_backward(grad_h, hidden[l - 1], 0);
  }
  std::vector<Tensor> out{g, grad_x_b};
  out.insert(out.end(), grad_w.begin(), grad_w.end());
  out.insert(out.end(), grad_b.begin(), grad_b.end());
  return out;
}
"""

_native = None


def native() -> types.ModuleType:
    """The compiled coupling functions (built on the first call, then cached by torch)."""
    global _native
    if _native is None:
        from torch.utils.cpp_extension import load_inline

        _native = load_inline(
            "flowforge_fused_coupling",
            cpp_sources=COUPLING_SOURCE,
            functions=["coupling_forward", "coupling_backward"],
            extra_cflags=["-O3"],
        )
    return _native


class FusedAffineCoupling(torch.autograd.Function):
    """``(x_A, x_B, B, L, W_1..L, b_1..L) -> (z_B, logdet)`` by the C++ functions."""

    @staticmethod
    def forward(ctx, x_a: Tensor, x_b: Tensor, bound: float, layers: int, *params: Tensor):
        weights, biases = list(params[:layers]), list(params[layers:])
        z_b, logdet, s, e, *hidden = native().coupling_forward(x_a, x_b, weights, biases, bound)
        ctx.save_for_backward(x_a, x_b, s, e, *hidden, *weights)
        ctx.bound, ctx.layers = bound, layers
        return z_b, logdet

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_logdet: Tensor):
        x_a, x_b, s, e, *rest = ctx.saved_tensors
        hidden, weights = rest[: ctx.layers - 1], rest[ctx.layers - 1 :]
        grads = native().coupling_backward(
            grad_z.contiguous(), grad_logdet.contiguous(), x_a, x_b, s, e, hidden, weights,
            ctx.bound,
        )  # fmt: skip
        return grads[0], grads[1], None, None, *grads[2:]


def _relu_linears(network: nn.Module, name: str) -> list[nn.Linear]:
    """The linear layers of ``network`` if it alternates them with ReLUs, else a ValueError."""
    layers = list(network)
    linears = layers[::2]
    if not all(isinstance(m, nn.Linear) for m in linears) or not all(
        isinstance(m, nn.ReLU) for m in layers[1::2]
    ):
        raise ValueError(f"{name}: only ReLU MLP conditioners are fused, got {network}")
    return linears


def fuse_couplings(flow: nn.Module) -> nn.Module:
    """Replace the forward of every :class:`AffineCoupling` of ``flow`` (unconditional, with
    a ReLU :class:`MLP` conditioner) by :class:`FusedAffineCoupling`; returns ``flow``."""
    couplings = [m for m in flow.modules() if isinstance(m, AffineCoupling)]
    if not couplings:
        raise ValueError("the flow has no affine coupling to fuse")
    for coupling in couplings:
        if coupling.context_dim or not isinstance(coupling.conditioner, MLP):
            raise ValueError("only unconditional couplings with an MLP conditioner are fused")
        linears = _relu_linears(coupling.conditioner, "AffineCoupling")

        def forward(self, x: Tensor, context: Tensor | None = None, linears=linears):
            x_a, x_b = self.partition.split(x)
            params = [m.weight for m in linears] + [m.bias for m in linears]
            z_b, logdet = FusedAffineCoupling.apply(
                x_a, x_b, self.scale_bound, len(linears), *params
            )
            return self.partition.merge(x_a, z_b), logdet

        coupling.forward = types.MethodType(forward, coupling)
    return flow


class MaskedReluNetwork(torch.autograd.Function):
    r"""``(x, L, W_1..L, M_1..L, b_1..L) -> y``: :math:`h_l = \mathrm{relu}(M_l \odot W_l
    h_{l-1} + b_l)`, :math:`y = M_L \odot W_L h_{L-1} + b_L`, with the backward written out
    and its masks applied in place."""

    @staticmethod
    def forward(ctx, x: Tensor, layers: int, *tensors: Tensor) -> Tensor:
        weights, masks = tensors[:layers], tensors[layers : 2 * layers]
        biases = tensors[2 * layers :]
        masked = [w * m for w, m in zip(weights, masks, strict=True)]
        inputs = [x]
        for w, b in zip(masked[:-1], biases[:-1], strict=True):
            inputs.append(torch.addmm(b, inputs[-1], w.T).relu_())
        ctx.save_for_backward(*inputs, *masked, *masks)
        ctx.layers = layers
        return torch.addmm(biases[-1], inputs[-1], masked[-1].T)

    @staticmethod
    def backward(ctx, g: Tensor):
        n = ctx.layers
        saved = ctx.saved_tensors
        inputs, masked, masks = saved[:n], saved[n : 2 * n], saved[2 * n :]
        grad_w, grad_b = [None] * n, [None] * n
        for i in reversed(range(n)):
            grad_w[i] = g.T.mm(inputs[i]).mul_(masks[i])
            grad_b[i] = g.sum(0)
            if i > 0:
                grad_h = g.mm(masked[i])
                g = torch.ops.aten.threshold_backward.grad_input(
                    grad_h, inputs[i], 0, grad_input=grad_h
                )
            else:
                g = g.mm(masked[0]) if ctx.needs_input_grad[0] else None
        return g, None, *grad_w, *([None] * n), *grad_b


def fuse_mades(flow: nn.Module) -> nn.Module:
    """Replace the forward of every :class:`MADE` of ``flow`` (no residual connections, ReLU
    activations) by :class:`MaskedReluNetwork`; returns ``flow``."""
    mades = [m for m in flow.modules() if isinstance(m, MADE)]
    if not mades:
        raise ValueError("the flow has no MADE to fuse")
    for made in mades:
        if made.residual or not all(isinstance(a, nn.ReLU) for a in made.activations):
            raise ValueError("only MADEs without residual connections and with ReLUs are fused")
        layers = [*made.hidden, made.output]

        def forward(self, h: Tensor, layers=layers) -> Tensor:
            y = MaskedReluNetwork.apply(
                h,
                len(layers),
                *[m.weight for m in layers],
                *[m.mask for m in layers],
                *[m.bias for m in layers],
            )
            return y.unflatten(-1, (self.features, self.params_per_feature))

        made.forward = types.MethodType(forward, made)
    return flow


FUSE = {"A": fuse_couplings, "C": fuse_mades}


def fused_subject(case: str) -> Subject:
    """flowforge's subject of ``case`` (as ``python -m benchmarks`` builds it), fused."""
    subject = flowforge_models.build(case)
    FUSE[case](subject.module)
    return subject


def check_equal(case: str, dtype: torch.dtype = torch.float64) -> float:
    """The largest difference between the eager and the fused model's loss and gradients,
    relative to the largest gradient entry, for random (not identity) parameters."""
    torch.manual_seed(0)
    eager = flowforge_models.build(case).module.to(dtype)
    with torch.no_grad():
        for p in eager.parameters():
            p.normal_(0, 0.1)
    fused = FUSE[case](flowforge_models.build(case).module.to(dtype))
    fused.load_state_dict(eager.state_dict())
    x = flowforge_models.batch(case).to(dtype)
    losses = []
    for model in (eager, fused):
        loss = -model.log_prob(x).mean()
        losses.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    (loss_e, grads_e), (loss_f, grads_f) = losses
    scale = max(g.abs().max().item() for g in grads_e)
    worst = max((a - b).abs().max().item() / scale for a, b in zip(grads_e, grads_f, strict=True))
    return max(worst, abs(loss_e.item() - loss_f.item()) / abs(loss_e.item()))


def header(check: bool = False) -> list[str]:
    """The table's header lines; ``check``: with the float64 check's column."""
    columns = "| case | eager step (ms) | fused step (ms) | fused speed-up | normflows (ms) "
    columns += "| eager vs normflows | fused vs normflows |" + (" check |" if check else "")
    return [columns, "|---|---|---|---|---|---|---|" + ("---|" if check else "")]


def row(case: str, ms: dict[str, float], difference: float | None = None) -> str:
    """One case's row from its median step times in ms (``eager``, ``fused`` and, when it
    was timed, ``normflows``) and, if given, the check's largest relative difference."""
    peer = ms.get("normflows")
    over_peer = [f"{peer / ms[name]:.2f}x" if peer else "-" for name in ("eager", "fused")]
    line = (
        f"| {case} | {ms['eager']:.2f} | {ms['fused']:.2f} | "
        f"{ms['eager'] / ms['fused']:.2f}x | {'-' if peer is None else f'{peer:.2f}'} "
        f"| {' | '.join(over_peer)} |"
    )
    return line + (f" {difference:.0e} |" if difference is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["A", "C"], choices=sorted(FUSE))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/fused.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = []
    lines = header(check=True)
    for case in args.cases:
        if case == "A":
            try:
                native()
            except Exception as error:  # no compiler, no ninja, a failed build
                reason = (str(error).strip().splitlines() or [""])[0]
                print(f"- A: skipped, the C++ coupling did not build: {reason}")
                continue
        difference = check_equal(case)
        batch = flowforge_models.batch(case)
        torch.manual_seed(0)
        calls = {
            "eager": training_step(flowforge_models.build(case), batch),
            "fused": training_step(fused_subject(case), batch),
        }
        if peers.installed(["normflows"]):
            calls["normflows"] = training_step(peers.build("normflows", case), batch)
        timings = interleaved(calls, args.rounds, args.warmup)
        ms = {name: t.median * 1e3 for name, t in timings.items()}
        lines.append(row(case, ms, difference))
        records.append(
            {
                "case": case,
                "threads": args.threads,
                "max_relative_difference": difference,
                **{name: t.as_dict() for name, t in timings.items()},
            }
        )
        print(lines[-1], flush=True)
    if records:  # nothing measured: keep the last run's file
        args.out.write_text(json.dumps(records, indent=1))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
