"""The CL-Net network: shapes, decoder selection, official-size parameter counts."""

from __future__ import annotations

import pytest
import torch
from clnet.model import CLNet, DecoderConfig, EncoderConfig
from clnet.model.factory import tiny_encoder


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_official_layout_parameter_counts():
    enc = EncoderConfig()
    net = CLNet(enc, {"full": DecoderConfig.default_for(enc, 28), "quarter": DecoderConfig.default_for(enc, 28, 0.25)})
    assert enc.features == (32, 64, 128, 256, 320, 320)
    assert enc.divisor == (16, 32, 32)
    # nnU-Net v1 sizes: encoder 14.0 M, one full decoder ≈ 17.2 M parameters.
    assert 13.9e6 < n_params(net.encoder) < 14.1e6
    assert 17.1e6 < n_params(net.decoders["full"]) < 17.3e6
    assert n_params(net.decoders["quarter"]) < n_params(net.decoders["full"]) / 6


def test_forward_runs_only_requested_decoders_and_encoder_once():
    enc = tiny_encoder()
    net = CLNet(enc, {"a": DecoderConfig.default_for(enc, 3), "b": DecoderConfig.default_for(enc, 5)}).eval()
    calls = []
    net.encoder.register_forward_hook(lambda *a: calls.append("enc"))
    for name in ("a", "b"):
        net.decoders[name].register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    x = torch.randn(2, 1, 8, 32, 32)
    with torch.no_grad():
        out = net(x, decoders=["b"])
    assert list(out) == ["b"] and out["b"].shape == (2, 5, 8, 32, 32)
    assert calls == ["enc", "b"]
    calls.clear()
    with torch.no_grad():
        both = net(x)
    assert calls == ["enc", "a", "b"] and both["a"].shape == (2, 3, 8, 32, 32)
    with pytest.raises(KeyError, match="unknown decoder"):
        net(x, decoders=["nope"])


def test_deep_supervision_outputs_full_resolution_first():
    enc = tiny_encoder()
    net = CLNet(enc, {"a": DecoderConfig.default_for(enc, 4)})
    outs = net(torch.randn(1, 1, 8, 32, 32), deep_supervision=True)["a"]
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 32, 32), (8, 16, 16), (4, 8, 8)]


def test_decoder_with_narrow_channels_and_add_decoder():
    enc = tiny_encoder()
    narrow = DecoderConfig(num_classes=2, channels=((5, 3, 2), (4, 4, 1), (2, 2, 2)))
    net = CLNet(enc, {"a": DecoderConfig.default_for(enc, 3)})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.add_decoder("narrow", narrow)
    assert net(torch.randn(1, 1, 8, 32, 32), decoders=["narrow"])["narrow"].shape == (1, 2, 8, 32, 32)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError):
        net.add_decoder("a", narrow)


def test_layer_order_conv_norm_lrelu_and_last_conv_linear():
    enc = tiny_encoder()
    net = CLNet(enc, {"a": DecoderConfig.default_for(enc, 3)})
    block = net.encoder.stages[1][0]
    assert [type(m).__name__ for m in block] == ["Conv3d", "InstanceNorm3d", "LeakyReLU"]
    assert block.conv.stride == (1, 2, 2) and block.act.negative_slope == 0.01
    level = net.decoders["a"].levels[-1]
    assert type(level.blocks[-1].act).__name__ == "Identity"
    assert type(level.blocks[0].act).__name__ == "LeakyReLU"
    assert level.up.bias is None and level.head.bias is None


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("slab_bytes", [1, None])  # 1: a slab per output slice, the most halo handling
def test_lean_forward_equals_the_plain_forward(monkeypatch, slab_bytes, channels_last):
    """The inference forward (convs over slabs of slices, norms in place, heads per box) gives the
    plain forward's logits: official kernel/stride layout ([1,3,3] then [3,3,3]; [1,2,2] then [2,2,2]),
    a narrow decoder, and a patch whose odd size makes the decoder centre-crop."""
    from clnet.model import lean

    monkeypatch.setattr(lean, "SLAB_BYTES", slab_bytes or lean.SLAB_BYTES)
    enc = EncoderConfig(features=(4, 8, 16, 16), kernels=((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
                        strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)))
    narrow = DecoderConfig.default_for(enc, 5, width_scale=0.5)
    torch.manual_seed(0)
    net = CLNet(enc, {"a": DecoderConfig.default_for(enc, 4), "b": narrow}).eval()
    for shape in [(1, 1, 12, 32, 32), (1, 1, 11, 30, 26)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            ref = net(x)
            out = {}
            for n, f in lean.features(net, x, ["a", "b"], channels_last=channels_last):
                assert f.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
                out[n] = lean.head_logits(net.decoders[n], f)
        for n in ("a", "b"):
            assert out[n].shape == ref[n].shape
            torch.testing.assert_close(out[n], ref[n], atol=2e-5, rtol=1e-4)
    with pytest.raises(KeyError):
        next(lean.features(net, x, ["nope"]))


def test_lean_instance_norm_in_half_precision_keeps_float32_statistics():
    from clnet.model.lean import _instance_norm_

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 6) * 3 + 1
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    want = torch.nn.functional.instance_norm(x, weight=w, bias=b, eps=1e-5)
    got32, got16 = x.clone(), x.to(torch.bfloat16)
    _instance_norm_(got32, w, b, 1e-5)
    _instance_norm_(got16, w, b, 1e-5)
    torch.testing.assert_close(got32, want, atol=1e-5, rtol=1e-5)
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.float(), want, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_channel_statistics_match_float64_even_far_from_zero(monkeypatch, channels_last):
    """Sums of values and squares (float64, piecewise) give var_mean's mean and variance, also for
    values whose mean is a thousand standard deviations from zero (where E[x²] - E[x]² in float32
    would cancel to noise), in either layout and with pieces smaller than one channel."""
    from clnet.model import lean

    monkeypatch.setattr(lean, "STATS_BYTES", 4 * 3 * 50)  # 50 voxels × 3 channels a piece
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, 7) * torch.tensor([1.0, 0.01, 2.0]).reshape(1, 3, 1, 1, 1) + 10.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    mean, var = lean._channel_stats(x)
    want_var, want_mean = torch.var_mean(x.double(), dim=(2, 3, 4), unbiased=False)
    torch.testing.assert_close(mean.double(), want_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(var.double(), want_var, atol=0, rtol=1e-3)
