"""Video part: flow channels, first-conv widening, backbone loading, freezing, temporal encoders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from veracity.models import create_detector
from veracity.models.video import TemporalEncoder, prepare_frames, srm_kernels, widen_input_conv


def _first_conv(det) -> torch.nn.Conv2d:
    bb = det.branch.frames.backbone
    return bb.get_submodule(bb.pretrained_cfg["first_conv"])


@pytest.mark.parametrize(("use_flow", "highpass", "chans"), [(True, False, 5), (False, False, 3), (True, True, 8),
                                                            (False, True, 6)])
def test_flow_and_highpass_widen_the_first_conv(contract, use_flow, highpass, chans):
    det = create_detector("tiny_video", contract, use_flow=use_flow, highpass=highpass)
    assert det.branch.frames.in_chans == chans
    assert _first_conv(det).in_channels == chans


def test_srm_residuals_ignore_flat_and_smooth_shading_but_see_texture():
    k = srm_kernels()
    assert k.shape == (3, 1, 5, 5)
    torch.testing.assert_close(k.flatten(1).norm(dim=1), torch.ones(3))
    flat = torch.full((1, 1, 16, 16), 0.7)
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16)  # smooth shading
    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # away from the zero padding
    assert F.conv2d(flat, k, padding=2)[inner].abs().max() < 1e-5
    assert F.conv2d(ramp, k, padding=2)[inner].abs().max() < 1e-5
    assert F.conv2d(noise, k, padding=2)[inner].abs().mean() > 0.3


def _residual_channels(enc, img: torch.Tensor) -> torch.Tensor:
    """The three SRM channels the encoder stacks on the RGB (caught at the backbone's input)."""
    seen = []
    h = enc.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 3:]))
    enc(img.unsqueeze(1))
    h.remove()
    return seen[0]


def test_normalised_residuals_keep_where_detail_is_and_drop_how_much(contract):
    # A crop whose inner square lost its fine detail (as a resampled face does), at two
    # residual levels (a sharper and a softer camera): normalised, the two look the same,
    # and the inner square still reads weaker than the rest.
    s = contract.face_size
    g = torch.Generator().manual_seed(0)
    tex = torch.randn(1, 1, s, s, generator=g)
    inner = (slice(None), slice(None), slice(s // 4, 3 * s // 4), slice(s // 4, 3 * s // 4))
    tex[inner] *= 0.3
    sharp = (0.1 * tex).expand(1, 3, s, s).clone()  # normalised crops: zero-centred
    soft = (0.04 * tex).expand(1, 3, s, s).clone()
    plain = create_detector("tiny_video", contract, use_flow=False, highpass_norm=False).branch.frames.eval()
    normed = create_detector("tiny_video", contract, use_flow=False, highpass_norm=True).branch.frames.eval()
    with torch.no_grad():
        a, b = _residual_channels(plain, sharp), _residual_channels(plain, soft)
        assert a.pow(2).mean() > 5 * b.pow(2).mean()  # raw residuals carry the camera's level
        na, nb = _residual_channels(normed, sharp), _residual_channels(normed, soft)
    torch.testing.assert_close(na, nb, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(na.pow(2).mean(dim=(2, 3)), torch.ones(1, 3), atol=1e-3, rtol=1e-3)
    assert na[inner].abs().mean() < 0.5 * na.abs().mean()


def test_frame_stride_encodes_fewer_frames_and_returns_one_token_per_frame(contract):
    det = create_detector("tiny_video", contract, frame_stride=2).eval()
    seen = []
    det.branch.frames.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    t = contract.frames_per_window
    video = torch.randn(2, t, 3, contract.face_size, contract.face_size)
    flow = torch.zeros(2, t, 2, contract.face_size // 2, contract.face_size // 2)
    tokens, pooled = det.branch(video, flow)
    assert seen == [t // 2] and tokens.shape[:2] == (2, t) and pooled.shape[0] == 2
    assert torch.equal(tokens[:, 0], tokens[:, 1])  # frame 1 shares frame 0's token
    with pytest.raises(ValueError, match="frame_stride"):
        create_detector("tiny_video", contract, frame_stride=0)


def test_flow_is_upsampled_to_the_crop_in_crop_pixels():
    video = torch.zeros(1, 2, 3, 8, 8)
    flow = torch.ones(1, 2, 2, 4, 4)  # one pixel of motion at half resolution
    x = prepare_frames(video, flow, use_flow=True, flow_norm=1.0)
    assert x.shape == (2, 5, 8, 8)
    assert torch.allclose(x[:, 3:], torch.full((2, 2, 8, 8), 2.0))
    assert torch.equal(prepare_frames(video, None, use_flow=True)[:, 3:], torch.zeros(2, 2, 8, 8))
    assert prepare_frames(video, flow, use_flow=False).shape == (2, 3, 8, 8)


def test_widen_input_conv_keeps_rgb_and_averages_into_extra_channels():
    w = torch.randn(4, 3, 3, 3)
    wide = widen_input_conv(w, 5)
    assert wide.shape == (4, 5, 3, 3)
    assert torch.equal(wide[:, :3], w)
    assert torch.allclose(wide[:, 3], w.mean(1)) and torch.allclose(wide[:, 4], w.mean(1))


@pytest.mark.parametrize("as_dir", [False, True])
def test_pretrained_rgb_backbone_loads_into_flow_model(tmp_path, contract, as_dir):
    import timm

    kw = create_detector("tiny_video", contract).config["backbone_kwargs"]
    src = timm.create_model("resnet10t", pretrained=False, num_classes=7, in_chans=3, **kw)  # with classifier
    path = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(path))
    det = create_detector("tiny_video", contract, highpass=False, pretrained=tmp_path if as_dir else path)
    w_src = src.get_submodule("conv1.0").weight
    w = _first_conv(det).weight
    assert torch.equal(w[:, :3], w_src)
    assert torch.allclose(w[:, 3:], w_src.mean(1, keepdim=True).expand(-1, 2, -1, -1))
    bb = det.branch.frames.backbone
    assert torch.equal(bb.layer4[0].conv2.weight, src.layer4[0].conv2.weight)


def test_freeze_first_groups(contract):
    det = create_detector("tiny_video", contract, freeze_first=2)  # stem + layer1
    frames = det.branch.frames
    grad = {n: p.requires_grad for n, p in frames.backbone.named_parameters()}
    assert not any(v for n, v in grad.items() if n.startswith(("conv1.", "bn1.", "layer1.")))
    assert all(v for n, v in grad.items() if n.startswith(("layer2.", "layer3.", "layer4.")))
    assert all(p.requires_grad for p in det.head.parameters())
    det.train()
    assert not frames.backbone.bn1.training and not frames.backbone.layer1[0].bn1.training
    assert frames.backbone.layer2[0].bn1.training
    with pytest.raises(ValueError, match="groups"):
        create_detector("tiny_video", contract, freeze_first=99)


def test_temporal_encoders():
    x = torch.randn(2, 6, 8)
    tokens, pooled = TemporalEncoder("mean", 8, num_frames=6)(x)
    assert torch.equal(tokens, x) and torch.allclose(pooled, x.mean(1), atol=1e-6)
    for kind in ("tconv", "transformer"):
        enc = TemporalEncoder(kind, 8, num_frames=4, layers=1, heads=2).eval()
        tokens, pooled = enc(x)  # 6 frames: the transformer interpolates its 4 positions
        assert tokens.shape == (2, 6, 8) and pooled.shape == (2, 8)
        # Temporal context: changing another frame changes the first frame's token.
        y = x.clone()
        far = -1 if kind == "transformer" else 1  # tconv reaches one neighbour per block
        y[:, far] = torch.randn(2, 8)
        assert not torch.allclose(enc(y)[0][:, 0], tokens[:, 0])
    with pytest.raises(ValueError, match="temporal"):
        TemporalEncoder("lstm", 8, 4)


def test_missing_faces_still_compute(contract, make_batch):
    det = create_detector("tiny_video", contract).eval()
    batch = make_batch(video_present=torch.tensor([True, False]))
    out = det(batch)
    assert torch.isfinite(out.logits).all()
