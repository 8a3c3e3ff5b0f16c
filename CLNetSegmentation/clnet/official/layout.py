"""Tensor-name correspondence between the official CL-Net checkpoints and our :class:`~clnet.model.CLNet`.

The official network is nnU-Net-v1 shaped; ours was laid out to match it tensor for tensor, so the
mapping is a pure renaming (no reshaping, no transposition):

================================================  ==========================================
official (after the ``encoder.`` prefix)          ours (``encoder.``)
================================================  ==========================================
``conv_blocks_context.{d}.blocks.{i}.conv.*``      ``stages.{d}.{i}.conv.*``        (d < last)
``conv_blocks_context.{d}.blocks.{i}.instnorm.*``  ``stages.{d}.{i}.norm.*``
``conv_blocks_context.{L}.0.blocks.{i}.*``         ``stages.{L}.{i}.*``   (bottleneck, i < n-1)
``conv_blocks_context.{L}.1.blocks.0.*``           ``stages.{L}.{n-1}.*``
================================================  ==========================================

================================================  ==========================================
official (after ``decoder_dict.<HEAD>.``)          ours (``decoders.<HEAD>.``)
================================================  ==========================================
``tu.{u}.weight``                                  ``levels.{u}.up.weight``
``conv_blocks_localization.{u}.0.blocks.{i}.*``    ``levels.{u}.blocks.{i}.*``
``conv_blocks_localization.{u}.1.blocks.0.*``      ``levels.{u}.blocks.{last}.*``
``seg_outputs.{u}.weight``                         ``levels.{u}.head.weight``
================================================  ==========================================

Architecture settings are read back from the tensor shapes (widths, kernels, class counts) and
from the plans (strides, which weights cannot reveal), then cross-checked against each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from ..errors import ModelError
from ..model.config import DecoderConfig, EncoderConfig, Triple

_NORM = {"conv": "conv", "instnorm": "norm"}
_ENC_RE = re.compile(r"^conv_blocks_context\.(\d+)\.")
_LOC_RE = re.compile(r"^conv_blocks_localization\.(\d+)\.(\d+)\.blocks\.(\d+)\.conv\.weight$")


def _block_names(official: str, ours: str, kernel_has_bias: bool = True) -> dict[str, str]:
    """The four tensors of one conv → instance-norm block."""
    out = {f"{official}.conv.weight": f"{ours}.conv.weight"}
    if kernel_has_bias:
        out[f"{official}.conv.bias"] = f"{ours}.conv.bias"
    out[f"{official}.instnorm.weight"] = f"{ours}.norm.weight"
    out[f"{official}.instnorm.bias"] = f"{ours}.norm.bias"
    return out


def encoder_name_map(cfg: EncoderConfig) -> dict[str, str]:
    """Official encoder tensor name (without ``encoder.``) → our ``Encoder`` state-dict name."""
    n, last = cfg.convs_per_stage, cfg.num_stages - 1
    names: dict[str, str] = {}
    for d in range(cfg.num_stages):
        for i in range(n):
            if d < last:
                official = f"conv_blocks_context.{d}.blocks.{i}"
            elif i < n - 1:  # nnU-Net v1 splits the bottleneck into (n-1 convs, first strided) + (1 conv)
                official = f"conv_blocks_context.{d}.0.blocks.{i}"
            else:
                official = f"conv_blocks_context.{d}.1.blocks.0"
            names.update(_block_names(official, f"stages.{d}.{i}"))
    return names


def decoder_name_map(cfg: DecoderConfig) -> dict[str, str]:
    """Official decoder tensor name (without ``decoder_dict.<HEAD>.``) → our ``Decoder`` name."""
    names: dict[str, str] = {}
    for u, chans in enumerate(cfg.channels):
        convs = len(chans) - 1
        names[f"tu.{u}.weight"] = f"levels.{u}.up.weight"
        for i in range(convs):
            official = (
                f"conv_blocks_localization.{u}.0.blocks.{i}" if i < convs - 1 else f"conv_blocks_localization.{u}.1.blocks.0"
            )
            names.update(_block_names(official, f"levels.{u}.blocks.{i}"))
        names[f"seg_outputs.{u}.weight"] = f"levels.{u}.head.weight"
    return names


def _shape(tensors: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in tensors:
        raise ModelError(f"The official {what} has no tensor {key!r}; the checkpoint does not have the CL-Net layout.",
                         "Check that SRC is the official results tree (or pass --config).")
    return tuple(tensors[key].shape)


def infer_encoder_config(
    tensors: Mapping[str, torch.Tensor], pool_kernels: Sequence[Sequence[int]], conv_kernels: Sequence[Sequence[int]] | None,
    negative_slope: float = 0.01, norm_eps: float = 1e-5,
) -> EncoderConfig:
    """Our :class:`EncoderConfig` for the official encoder tensors (``encoder.`` prefix removed).

    Widths and kernels come from the weights, strides from the plans' ``pool_op_kernel_sizes``
    (the first conv of stage d > 0 strides by ``pool_kernels[d - 1]``).
    """
    stages = sorted({int(m.group(1)) for k in tensors if (m := _ENC_RE.match(k))})
    if not stages or stages != list(range(len(stages))):
        raise ModelError(f"The official encoder stages are not numbered 0..N-1 (found {stages}).",
                         "The checkpoint does not have the CL-Net general-encoder layout.")
    num = len(stages)
    last = num - 1
    if len(pool_kernels) != num - 1:
        raise ModelError(
            f"The plans list {len(pool_kernels)} pooling steps but the encoder has {num} stages.",
            "Use the plans.json that belongs to the general-encoder checkpoint.",
        )
    first = {k for k in tensors if k.startswith("conv_blocks_context.0.blocks.") and k.endswith(".conv.weight")}
    n = len(first)
    head = {k for k in tensors if k.startswith(f"conv_blocks_context.{last}.0.blocks.") and k.endswith(".conv.weight")}
    if n < 2 or len(head) != n - 1:
        raise ModelError(
            f"Unsupported official encoder: {n} conv(s) in stage 0 and {len(head) + 1} in the bottleneck.",
            "clnet supports the nnU-Net v1 layout with the same number (>= 2) of convs in every stage.",
        )
    features, kernels = [], []
    in_channels = None
    for d in range(num):
        key = f"conv_blocks_context.{d}.blocks.0.conv.weight" if d < last else f"conv_blocks_context.{d}.0.blocks.0.conv.weight"
        shp = _shape(tensors, key, "encoder")
        if d == 0:
            in_channels = shp[1]
        features.append(shp[0])
        kernels.append(tuple(shp[2:]))
    for d, k in enumerate(kernels):
        if any(v not in (1, 3) for v in k):
            # nnU-Net pads 1 only where the kernel is 3 (0 otherwise); ours pads (k-1)//2, equal for 1 and 3 only.
            raise ModelError(f"Official encoder stage {d} has kernel {k}; only sizes 1 and 3 are supported.")
        if conv_kernels is not None and d < len(conv_kernels) and tuple(int(v) for v in conv_kernels[d]) != k:
            raise ModelError(f"Encoder stage {d}: the plans say kernel {tuple(conv_kernels[d])}, the weights have {k}.",
                             "Use the plans.json that belongs to the general-encoder checkpoint.")
    strides: list[Triple] = [(1, 1, 1)] + [tuple(int(v) for v in p) for p in pool_kernels]  # type: ignore[misc]
    return EncoderConfig(
        in_channels=int(in_channels or 1), features=tuple(features), kernels=tuple(kernels), strides=tuple(strides),
        convs_per_stage=n, negative_slope=negative_slope, norm_eps=norm_eps,
    )


def infer_decoder_config(tensors: Mapping[str, torch.Tensor], enc: EncoderConfig, head: str) -> DecoderConfig:
    """Our :class:`DecoderConfig` for one official head (prefix removed, pruning already folded)."""
    what = f"decoder {head}"
    levels = enc.num_stages - 1
    channels = []
    for u in range(levels):
        stage = enc.num_stages - 2 - u
        tu = _shape(tensors, f"tu.{u}.weight", what)
        if tuple(tu[2:]) != enc.strides[stage + 1]:
            raise ModelError(
                f"Decoder {head} level {u} upsamples by {tuple(tu[2:])} but the encoder downsampled by "
                f"{enc.strides[stage + 1]}.", "The head and the general encoder come from different plans.")
        convs: dict[int, tuple[int, ...]] = {}
        for k in tensors:
            m = _LOC_RE.match(k)
            if m and int(m.group(1)) == u:
                part, i = int(m.group(2)), int(m.group(3))
                if part == 1 and i != 0:
                    raise ModelError(f"Unexpected tensor {k} in decoder {head}: the last block holds one conv.")
                convs[(i if part == 0 else 10_000)] = tuple(tensors[k].shape)
        if 10_000 not in convs or not convs:
            raise ModelError(f"Decoder {head} level {u} has no final conv (conv_blocks_localization.{u}.1.blocks.0).",
                             "clnet supports decoders with at least two convs per level (the official setting).")
        order = sorted(convs)
        if order[:-1] != list(range(len(order) - 1)):
            raise ModelError(f"Decoder {head} level {u}: conv blocks are not numbered 0..N-1.")
        widths = [tu[1]]
        for key in order:
            shp = convs[key]
            if tuple(shp[2:]) != enc.kernels[stage + 1]:
                # Our decoder reuses the encoder's kernel of the same resolution, as the official planner does.
                raise ModelError(f"Decoder {head} level {u} uses kernel {tuple(shp[2:])}; clnet expects "
                                 f"{enc.kernels[stage + 1]} (the encoder's kernel at that resolution).")
            widths.append(shp[0])
        channels.append(tuple(widths))
    seg = _shape(tensors, f"seg_outputs.{levels - 1}.weight", what)
    return DecoderConfig(num_classes=int(seg[0]), channels=tuple(channels))


def rename_checked(
    official: Mapping[str, torch.Tensor], names: Mapping[str, str], expected: Mapping[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Rename ``official`` tensors with ``names`` and insist on a perfect, shape-exact cover of ``expected``.

    Raises :class:`ModelError` listing leftover, missing and mis-shaped tensor names.
    """
    leftover = sorted(set(official) - set(names))
    missing_src = sorted(set(names) - set(official))
    unmapped = sorted(set(expected) - set(names.values()))
    out: dict[str, torch.Tensor] = {}
    wrong = []
    for src, dst in names.items():
        if src not in official or dst not in expected:
            continue
        t = official[src]
        if tuple(t.shape) != tuple(expected[dst].shape):
            wrong.append(f"{src} {tuple(t.shape)} -> {dst} {tuple(expected[dst].shape)}")
            continue
        out[dst] = t.detach().to(torch.float32).contiguous()
    if leftover or missing_src or unmapped or wrong:
        parts = []
        if leftover:
            parts.append(f"left over (no place in our model): {leftover}")
        if missing_src:
            parts.append(f"missing from the checkpoint: {missing_src}")
        if unmapped:
            parts.append(f"our tensors with no official source: {unmapped}")
        if wrong:
            parts.append(f"shape mismatch: {wrong}")
        raise ModelError(f"The official {what} does not map onto clnet's network: {'; '.join(parts)}.",
                         "The checkpoint is not the CL-Net layout clnet supports; please report it.")
    return out
