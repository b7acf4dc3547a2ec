"""Variational inference: reverse-KL training, annealing, and the vi / diagnose commands."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import flowforge as ff
from flowforge.cli import main
from flowforge.inference import targets
from flowforge.inference.diagnostics import diagnose
from flowforge.inference.variational import annealing, fit_variational


@pytest.mark.parametrize("model", ["realnvp", "iaf"])
def test_vi_recovers_a_correlated_gaussian_and_its_normaliser(model):
    target = targets.get("gaussian", dim=3, seed=1)
    torch.manual_seed(0)
    flow = ff.models.MODELS[model](dim=3, layers=4, hidden=(16,), base="diag-normal")
    history = fit_variational(flow, target, steps=1500, batch_size=500, lr=1e-2, progress=False)
    assert history.records[-1]["elbo"] > history.records[0]["elbo"]
    samples = flow.sample(100_000).double()
    scale = target.covariance.diagonal().sqrt()
    normalise = torch.outer(scale, scale)
    torch.testing.assert_close(samples.mean(0), target.mean.double(), atol=0.05, rtol=0)
    torch.testing.assert_close(
        samples.T.cov() / normalise, target.covariance.double() / normalise, atol=0.05, rtol=0
    )
    report = diagnose(flow, target, n=100_000)
    assert abs(report.log_z - target.log_normalizer()) < 0.02
    assert report.kl is not None and 0 <= report.kl < 0.02
    assert not report.khat_flag


def gaussian_q(loc: list[float], std: list[float]) -> ff.Flow:
    """A flow whose density is exactly N(loc, diag(std^2)): an identity planar layer."""
    flow = ff.models.planar(dim=2, layers=1, base="diag-normal").double()
    with torch.no_grad():
        planar = ff.transforms.steps(flow.transform)[0].inv
        planar.u.copy_(math.log(math.e - 1) * planar.w / (planar.w @ planar.w))
        flow.base.loc.copy_(torch.tensor(loc))
        flow.base.log_scale.copy_(torch.tensor(std).log())
    return flow


def test_a_q_on_one_mode_of_u1_pays_ln_2_and_only_the_kl_sees_it():
    """U1 has two equal modes at z1 = +-2; a q on one of them misses half the mass, so
    KL(q||p) >= ln 2. The importance weights only see q's own samples: an under-dispersed q
    (the usual outcome of reverse KL) has heavy-tailed weights and a flagged k-hat, but a q
    as wide as the mode does not, although it misses the other mode just the same."""
    target = targets.get("u1")
    narrow = diagnose(gaussian_q([2.0, 0.0], [0.3, 0.6]), target, n=100_000)
    assert narrow.kl > math.log(2)
    assert narrow.khat_flag and narrow.khat > 0.7
    wide = diagnose(gaussian_q([2.0, 0.0], [0.4, 0.9]), target, n=100_000)
    assert wide.kl > math.log(2)
    assert not wide.khat_flag


def test_annealing_schedule():
    assert annealing(0, None) == 1.0
    assert annealing(0, 1000) == pytest.approx(0.01)
    assert annealing(500, 1000) == pytest.approx(0.01 + 0.99 * 0.5)
    assert annealing(5000, 1000) == 1.0


def test_every_model_works_for_vi():
    target = targets.get("gaussian", dim=2, seed=0)
    m = ff.models
    for builder in (m.planar, m.radial, m.realnvp, m.nice, m.maf, m.iaf, m.nsf):
        torch.manual_seed(0)
        kwargs = {} if builder in (m.planar, m.radial) else {"hidden": (8,)}
        flow = builder(dim=2, layers=2, base="diag-normal", **kwargs)
        history = fit_variational(flow, target, steps=200, batch_size=64, progress=False)
        assert history.records[-1]["elbo"] > history.records[0]["elbo"] - 0.5
        assert math.isfinite(history.records[-1]["elbo"])


def test_bad_vi_arguments():
    flow = ff.models.planar(dim=2, layers=1)
    target = targets.get("u1")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        fit_variational(flow, target, steps=0)
    with pytest.raises(ValueError, match="anneal must be"):
        fit_variational(flow, target, anneal=-5)
    with pytest.raises(ValueError, match="clip must be a positive number"):
        fit_variational(flow, target, clip=-1.0)


def test_vi_and_diagnose_from_the_command_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "mytarget.py").write_text(
        "def log_p(z):\n    return -0.5 * ((z - 1.0) ** 2).sum(-1)\n"
    )
    monkeypatch.chdir(tmp_path)
    args = ["vi", "--target", "mytarget:log_p", "--dim", "2", "--model", "planar", "--layers", "2"]
    assert main([*args, "--steps", "300", "--out", "run", "--no-progress"]) == 0
    run = tmp_path / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["target"], config["model"], config["steps"]) == ("mytarget:log_p", "planar", 300)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 300 and math.isfinite(records[-1]["elbo"])
    flow = ff.load(run)
    assert torch.isfinite(flow.log_prob(torch.randn(7, 2))).all()
    assert (run / "plots" / "density.png").stat().st_size > 10_000
    assert (run / "plots" / "elbo.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["diagnose", "run", "-n", "20000"]) == 0
    out = capsys.readouterr().out
    written = json.loads((run / "diagnostics.json").read_text())
    assert written["n"] == 20_000 and f"ESS           {written['ess']:,.1f}" in out
    assert written["ess_fraction"] == pytest.approx(written["ess"] / 20_000)
    # exp(-|z - 1|^2 / 2) integrates to 2 pi: importance sampling must find it
    assert abs(written["log_z"] - math.log(2 * math.pi)) < 5 * written["log_z_se"]


def test_vi_bad_target_gives_one_line(tmp_path, capsys):
    code = main(["vi", "--target", "u9", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "config value 'target' must be one of" in capsys.readouterr().err
    code = main(["vi", "--target", "nomodule:f", "--out", str(tmp_path / "r"), "--dim", "2"])
    assert code == 2 and "cannot import module 'nomodule'" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["iaf", "nsf", "maf"])
def test_vi_with_autoregressive_and_spline_flows_from_the_command_line(model, tmp_path, capsys):
    args = ["vi", "--target", "u1", "--model", model, "--layers", "2", "--hidden", "8"]
    assert main([*args, "--steps", "50", "--out", str(tmp_path), "--no-progress"]) == 0
    assert ff.load(tmp_path).config["model"] == model
    assert main(["diagnose", str(tmp_path), "-n", "2000"]) == 0
    assert "KL" in capsys.readouterr().out
