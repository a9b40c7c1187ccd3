"""The DiT editor and rectified flow: shapes, the sampler, Kiwi-Edit's source injection, sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from curation.train import flow
from curation.train.model import DIT_SIZES, DiTEditor, build_model, sincos_3d


def inputs(n=2, t=3, h=16, w=24, r=1, text_dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(n, 3, t, h, w, generator=g), t=torch.rand(n, generator=g),
                text=torch.randn(n, 5, text_dim, generator=g), text_mask=torch.tensor([[True] * 5, [True, True, False, False, False]]),
                source=torch.randn(n, 3, t, h, w, generator=g), reference=torch.randn(n, 3, r, h, w, generator=g))


def tiny(**overrides) -> DiTEditor:
    torch.manual_seed(0)
    return build_model("tiny", patch_size=(1, 8, 8), **overrides)


def test_forward_keeps_the_latent_shape_for_videos_images_and_references():
    model = tiny()
    for t, r in ((3, 1), (1, 0), (1, 2)):
        args = inputs(t=t, r=r)
        if r == 0:
            args["reference"] = None
        assert model(**args).shape == args["x"].shape


def test_sampler_output_has_the_target_shape():
    model = tiny()
    args = inputs()
    noise = args.pop("x")
    args.pop("t")
    out = flow.sample(model, noise, args, steps=3, guidance=3.0)
    assert out.shape == noise.shape and torch.isfinite(out).all()


def test_source_injection_starts_silent_yet_learns_through_gamma():
    """Kiwi-Edit eq. 1: the source's patch embed is zero-initialised, so the untrained editor's
    output does not depend on the source; but γ(t) starts at 1, so the loss's gradient reaches
    the injection path, and one optimizer step makes the output depend on the source."""
    model = tiny()
    with torch.no_grad():  # give the output layer weights (adaLN-Zero starts it at zero), so the output is not trivially 0
        torch.nn.init.normal_(model.final.linear.weight, std=0.02)
    args = inputs()
    other = dict(args, source=torch.randn_like(args["source"]))
    with torch.no_grad():
        out = model(**args)
        assert out.abs().sum() > 0 and torch.equal(out, model(**other))
    loss = model(**args).pow(2).mean()
    loss.backward()
    grad = model.source.embed.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    with torch.no_grad():
        assert not torch.allclose(model(**args), model(**other))


def test_gamma_zero_closes_the_injection_path():
    """γ = 0 multiplies the source tokens away: no gradient reaches the source patch embed, while
    γ itself still receives one once the patch embed is non-zero."""
    model = tiny()
    with torch.no_grad():
        torch.nn.init.normal_(model.final.linear.weight, std=0.02)
        model.source.gamma[1].bias.zero_()
    model(**inputs()).pow(2).mean().backward()
    assert model.source.embed.proj.weight.grad.abs().sum() == 0
    model.zero_grad()
    with torch.no_grad():
        torch.nn.init.normal_(model.source.embed.proj.weight, std=0.02)
    model(**inputs()).pow(2).mean().backward()
    assert model.source.gamma[1].bias.grad.abs().sum() > 0


def test_dropped_conditions_change_the_output():
    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    args = inputs()
    keep = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        base = model(**args, drop_text=keep, drop_source=keep)
        assert not torch.allclose(base, model(**args, drop_text=~keep, drop_source=keep))
        assert not torch.allclose(base, model(**args, drop_text=keep, drop_source=~keep))


def test_named_sizes_and_validation():
    assert set(DIT_SIZES) == {"tiny", "S", "B"}
    small = build_model("S", patch_size=(1, 2, 2), in_channels=4, text_dim=768)
    assert 30e6 < sum(p.numel() for p in small.parameters()) < 60e6
    with pytest.raises(ValueError, match="unknown model size"):
        build_model("XL")
    with pytest.raises(ValueError, match="do not divide"):
        tiny()(**inputs(h=12))
    assert sincos_3d((2, 3, 4), 64, torch.device("cpu")).shape == (24, 64)


def test_the_model_file_stays_under_400_lines():
    source = Path(__file__).parents[2] / "curation" / "train" / "model.py"
    assert len(source.read_text().splitlines()) < 400


def test_rectified_flow_path_target_and_time_sampling():
    x0, x1 = torch.zeros(4, 3, 1, 2, 2), torch.ones(4, 3, 1, 2, 2)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = flow.compute_xt(x0, x1, t)
    assert torch.allclose(xt[:, 0, 0, 0, 0], t) and torch.equal(flow.compute_ut(x0, x1), x1 - x0)
    g = torch.Generator().manual_seed(0)
    uniform = flow.sample_t(20000, flow.FlowConfig(t_sampling="uniform"), g)
    logit = flow.sample_t(20000, flow.FlowConfig(t_sampling="logit_normal", logit_mean=1.0), g)
    assert uniform.min() >= 0 and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.01
    assert abs(torch.logit(logit).mean() - 1.0) < 0.03 and abs(torch.logit(logit).std() - 1.0) < 0.03
    assert abs(flow.drop_mask(20000, 0.1, g).float().mean() - 0.1) < 0.01


def test_training_losses_are_a_dict_of_terms_and_reproducible():
    model = tiny()
    args = inputs()
    x1 = args.pop("x")
    args.pop("t")
    cfg = flow.FlowConfig()
    a = flow.training_losses(model, x1, args, cfg, torch.Generator().manual_seed(3))
    b = flow.training_losses(model, x1, args, cfg, torch.Generator().manual_seed(3))
    assert set(a) == {"loss", "mse", "t"} and a["mse"].shape == (2,) and torch.equal(a["loss"], b["loss"])
    # the untrained model predicts zero velocity: the loss is E|x1 - x0|², about var(x1) + 1
    assert abs(a["loss"].item() - (x1.pow(2).mean() + 1).item()) < 0.3
