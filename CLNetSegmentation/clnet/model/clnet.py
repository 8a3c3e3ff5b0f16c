"""CL-Net: one general encoder, many decoding heads; run the encoder once and only the heads asked for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .config import DecoderConfig, EncoderConfig
from .decoder import Decoder
from .encoder import Encoder


class CLNet(nn.Module):
    def __init__(self, encoder: EncoderConfig, decoders: Mapping[str, DecoderConfig]) -> None:
        super().__init__()
        self.encoder_config = encoder
        self.encoder = Encoder(encoder)
        self.decoders = nn.ModuleDict({name: Decoder(encoder, cfg) for name, cfg in decoders.items()})

    def add_decoder(self, name: str, config: DecoderConfig) -> Decoder:
        """Attach a new head (continual learning: the encoder and other heads are left as they are)."""
        if name in self.decoders:
            raise ValueError(f"decoder {name!r} already exists")
        dec = Decoder(self.encoder_config, config)
        self.decoders[name] = dec
        return dec

    def forward(
        self, x: torch.Tensor, decoders: Sequence[str] | None = None, deep_supervision: bool = False
    ) -> dict[str, torch.Tensor]:
        names = list(self.decoders) if decoders is None else list(decoders)
        unknown = [n for n in names if n not in self.decoders]
        if unknown:
            raise KeyError(f"unknown decoder(s) {unknown}; this model has {list(self.decoders)}")
        skips = self.encoder(x)
        return {n: self.decoders[n](skips, deep_supervision) for n in names}
