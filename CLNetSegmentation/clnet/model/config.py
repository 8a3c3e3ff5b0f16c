"""Architecture settings, stored in a model's manifest so a model rebuilds itself exactly.

Axis order is the array order used everywhere in the engine: (z, y, x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

Triple = tuple[int, int, int]


def _triples(values) -> tuple[Triple, ...]:
    return tuple(tuple(int(v) for v in t) for t in values)  # type: ignore[misc]


@dataclass(frozen=True)
class EncoderConfig:
    """The general encoder: nnU-Net-style stages of (conv → instance norm → leaky ReLU).

    ``strides[d]`` is the stride of stage d's first conv (strided-conv downsampling; stage 0 has
    stride 1). The official CL-Net layout is the default: 6 stages, 32 → 320 channels.
    """

    in_channels: int = 1
    features: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    kernels: tuple[Triple, ...] = ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    strides: tuple[Triple, ...] = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    convs_per_stage: int = 2
    negative_slope: float = 0.01
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        object.__setattr__(self, "kernels", _triples(self.kernels))
        object.__setattr__(self, "strides", _triples(self.strides))
        n = len(self.features)
        if len(self.kernels) != n or len(self.strides) != n:
            raise ValueError("encoder features, kernels and strides must have one entry per stage")
        if n < 2:
            raise ValueError("the encoder needs at least two stages")

    @property
    def num_stages(self) -> int:
        return len(self.features)

    @property
    def divisor(self) -> Triple:
        """Patch sizes must be multiples of this (the product of all strides per axis)."""
        out = [1, 1, 1]
        for s in self.strides:
            out = [o * v for o, v in zip(out, s)]
        return tuple(out)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        return cls(**d)


@dataclass(frozen=True)
class DecoderConfig:
    """One decoding head.

    ``channels[u]`` lists the output widths of level u (u = 0 is the deepest): first the
    transposed-conv upsampling, then each conv of the level. Structured pruning narrows these.
    ``num_classes`` counts the background channel.
    """

    num_classes: int
    channels: tuple[tuple[int, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(tuple(int(c) for c in lvl) for lvl in self.channels))

    @classmethod
    def default_for(cls, encoder: EncoderConfig, num_classes: int, width_scale: float = 1.0) -> DecoderConfig:
        """The nnU-Net widths mirrored from the encoder, optionally scaled (e.g. 0.25)."""
        levels = []
        for stage in range(encoder.num_stages - 2, -1, -1):
            w = max(1, int(round(encoder.features[stage] * width_scale)))
            levels.append((w,) * (1 + encoder.convs_per_stage))
        return cls(num_classes=num_classes, channels=tuple(levels))

    def to_dict(self) -> dict:
        return {"num_classes": self.num_classes, "channels": [list(c) for c in self.channels]}

    @classmethod
    def from_dict(cls, d: dict) -> DecoderConfig:
        return cls(num_classes=int(d["num_classes"]), channels=tuple(tuple(c) for c in d["channels"]))
