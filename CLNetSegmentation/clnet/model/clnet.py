"""CL-Net: one general encoder, many decoding heads; run the encoder once and only the heads asked for."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

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

    def check_decoders(self, names: Sequence[str]) -> list[str]:
        """``names`` as a list; KeyError naming the ones this model does not have."""
        unknown = [n for n in names if n not in self.decoders]
        if unknown:
            raise KeyError(f"unknown decoder(s) {unknown}; this model has {list(self.decoders)}")
        return list(names)

    def forward(
        self, x: torch.Tensor, decoders: Sequence[str] | None = None, deep_supervision: bool = False
    ) -> dict[str, torch.Tensor]:
        return dict(self.heads(x, decoders, deep_supervision))

    def heads(
        self, x: torch.Tensor, decoders: Sequence[str] | None = None, deep_supervision: bool = False
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Run the encoder once, then yield (name, logits) one decoder at a time, so that a caller
        can use and drop each head's output before the next one is computed."""
        names = self.check_decoders(list(self.decoders) if decoders is None else decoders)
        skips = self.encoder(x)
        for n in names:
            yield n, self.decoders[n](skips, deep_supervision)
