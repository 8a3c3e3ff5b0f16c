#!/usr/bin/env python
"""One tile through the lean inference forward in each memory layout and precision the engine can
use on this machine: the encoder once and one decoder, seconds per tile (median of ``--repeats``).

    python benchmarks/bench_layout.py                      # official layout, decoders at quarter width
    python benchmarks/bench_layout.py --width 1.0 --json out.json

NCDHW is PyTorch's default layout; NDHWC (channels-last) is what oneDNN's 3D convolutions run fastest
in on the CPU, and what the engine uses there. bf16 is measured where the CPU has native bf16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_inference import md_table  # noqa: E402


def official_network(width: float):
    """The official encoder and one random decoder of the official layout (64 classes) at ``width``."""
    from clnet.model import CLNet, DecoderConfig
    from clnet.model.factory import official_encoder

    encoder = official_encoder()
    torch.manual_seed(0)
    return CLNet(encoder, {"d": DecoderConfig.default_for(encoder, 64, width_scale=width)}).eval()


def time_tile(network, x: torch.Tensor, channels_last: bool, dtype: torch.dtype | None, repeats: int) -> dict:
    from clnet.model import lean

    def once() -> tuple[float, float]:
        context = torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext()
        with torch.inference_mode(), context:
            t = time.perf_counter()
            skips = lean.encode(network, x, channels_last)
            t_enc = time.perf_counter() - t
            t = time.perf_counter()
            feats = lean.decode(network.decoders["d"], skips, channels_last)
            lean.head_logits(network.decoders["d"], feats[:, :, :16])
            return t_enc, time.perf_counter() - t

    once()  # warm-up: oneDNN builds its kernels on the first call
    runs = [once() for _ in range(repeats)]
    return {"encoder_s": statistics.median(r[0] for r in runs), "decoder_s": statistics.median(r[1] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=0.25, help="decoder width (0.25: pruned, 1.0: dense)")
    p.add_argument("--patch", default="112,96,128", help="tile size z,y,x (default: the official patch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    patch = tuple(int(v) for v in args.patch.split(","))
    network = official_network(args.width)
    x = torch.randn(1, 1, *patch)
    from clnet.inference.device import cpu_has_bf16

    bf16 = cpu_has_bf16()
    configs = [("NCDHW", False, None), ("NDHWC", True, None)]
    if bf16:
        configs += [("NCDHW", False, torch.bfloat16), ("NDHWC", True, torch.bfloat16)]
    rows, results = [], []
    base = None
    for name, channels_last, dtype in configs:
        r = time_tile(network, x, channels_last, dtype, args.repeats)
        total = r["encoder_s"] + r["decoder_s"]
        base = base or total
        precision = "bf16" if dtype is not None else "float32"
        results.append({"layout": name, "precision": precision, **{k: round(v, 4) for k, v in r.items()}})
        rows.append([name, precision, r["encoder_s"], r["decoder_s"], total, f"{base / total:.2f}×"])
    print(f"# One {'×'.join(map(str, patch))} tile, official encoder + one decoder at {args.width:g}× width, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
          + ("" if bf16 else "; this CPU has no native bf16, so bf16 is not measured"))
    print()
    print(md_table(["layout", "precision", "encoder s", "decoder s", "tile s", "speed-up"], rows))
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "patch_zyx": list(patch), "width": args.width, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
