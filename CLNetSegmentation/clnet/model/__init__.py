"""CL-Net network: general encoder + decoding heads.

The configs import without torch (the Slicer panel reads manifests before torch is installed);
the modules load torch on first use.
"""

from .config import DecoderConfig, EncoderConfig

_LAZY = {"CLNet": ".clnet", "Decoder": ".decoder", "Encoder": ".encoder"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)


__all__ = ["CLNet", "Decoder", "DecoderConfig", "Encoder", "EncoderConfig"]
