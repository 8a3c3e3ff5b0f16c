"""CL-Net network: general encoder + decoding heads."""

from .clnet import CLNet
from .config import DecoderConfig, EncoderConfig
from .decoder import Decoder
from .encoder import Encoder

__all__ = ["CLNet", "Decoder", "DecoderConfig", "Encoder", "EncoderConfig"]
