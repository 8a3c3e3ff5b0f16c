"""Memory estimate, memory check and the out-of-memory fallback (no GPU needed)."""

from __future__ import annotations

import pytest
import torch
from clnet.errors import ClnetError
from clnet.inference.accumulator import accumulator_dtype
from clnet.inference.resources import (
    GB,
    ResourceError,
    activation_bytes,
    available_memory,
    check_memory,
    estimate_memory,
    network_parameters,
    oom_fallback,
)
from clnet.inference.tiling import TileGrid
from clnet.manifest import Preprocessing
from clnet.model.clnet import CLNet
from clnet.model.factory import build_manifest, official_encoder, tiny_encoder


def official_manifest(n_decoders: int = 9, classes: int = 25):
    names = [f"Structure_{i}" for i in range(n_decoders * classes)]
    heads = {f"head{d}": names[d * classes : (d + 1) * classes] for d in range(n_decoders)}
    prep = Preprocessing(spacing_zyx=(1.5, 1.5, 1.5), patch_size_zyx=(112, 96, 128))
    return build_manifest("official-size", official_encoder(), heads, prep)


@pytest.fixture(scope="module")
def official():
    return official_manifest()


@pytest.fixture(scope="module")
def tiny():
    prep = Preprocessing(spacing_zyx=(3.0, 3.0, 3.0), patch_size_zyx=(32, 64, 64))
    return build_manifest("tiny", tiny_encoder(), {"a": ["Liver", "Spleen"], "b": ["Bone_Vert_L1"]}, prep)


def test_parameter_count_matches_the_real_network(tiny, official):
    for manifest in (tiny, official):
        with torch.device("meta"):  # shapes only: building 170M random weights would take seconds
            net = CLNet(manifest.encoder, {n: d.config for n, d in manifest.decoders.items()})
        assert network_parameters(manifest, list(manifest.decoders)) == sum(p.numel() for p in net.parameters())


def test_estimate_grows_with_image_size_and_decoders(official):
    decoders = list(official.decoders)
    small = estimate_memory((512, 512, 200), (0.8, 0.8, 1.0), official, decoders[:1])
    bigger_image = estimate_memory((512, 512, 800), (0.8, 0.8, 1.0), official, decoders[:1])
    more_heads = estimate_memory((512, 512, 200), (0.8, 0.8, 1.0), official, decoders)
    assert bigger_image.peak_bytes > small.peak_bytes
    assert more_heads.peak_bytes > small.peak_bytes
    # The open cells of the 1.5 mm grid (512 × 0.8 mm → 273 voxels) hold every head's classes, in
    # uint8 once that is large, plus one float32 weight factor per head.
    classes = [official.decoders[d].config.num_classes for d in decoders]
    voxels = TileGrid((133, 273, 273), (112, 96, 128), official.preprocessing.overlap).most_open_voxels()
    assert voxels < 112 * 273 * 273  # less than a whole row of tiles

    def store(cs: list[int]) -> int:
        return (sum(cs) * accumulator_dtype(sum(cs) * voxels).itemsize + 4 * len(cs)) * voxels

    assert accumulator_dtype(sum(classes) * voxels) == torch.uint8
    assert small.breakdown["open_cell_store"] == store(classes[:1])
    assert more_heads.breakdown["open_cell_store"] == store(classes)
    assert set(small.phases) == {"prepare", "network", "merge"}
    assert small.peak_bytes == max(small.phase_bytes(p) for p in small.phases)


def test_estimate_is_roughly_linear_in_z_for_long_scans(official):
    decoders = list(official.decoders)
    sizes = [8000, 16000, 32000]  # long enough for one phase (the merge) to set the peak
    peaks = [estimate_memory((512, 512, z), (0.8, 0.8, 0.8), official, decoders).peak_bytes for z in sizes]
    slope1 = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])
    slope2 = (peaks[2] - peaks[1]) / (sizes[2] - sizes[1])
    assert slope1 > 0 and slope2 == pytest.approx(slope1, rel=0.05)
    # The open cells, not the whole volume, hold the class scores: that part does not grow with z.
    stores = {estimate_memory((512, 512, z), (0.8, 0.8, 0.8), official, decoders).breakdown["open_cell_store"]
             for z in sizes}
    assert max(stores) < 1.02 * min(stores)  # tile spacing differs a little with the length


def test_fast_mode_and_batch_size(official):
    official.preprocessing.fast_spacing_zyx = (3.0, 3.0, 3.0)
    try:
        args = ((512, 512, 600), (0.8, 0.8, 1.0), official, list(official.decoders))
        normal, fast = estimate_memory(*args), estimate_memory(*args, fast=True)
        assert fast.breakdown["open_cell_store"] < normal.breakdown["open_cell_store"] / 3
        batch4 = estimate_memory(*args, batch_size=4)
        assert batch4.breakdown["network_activations"] == 4 * normal.breakdown["network_activations"]
    finally:
        official.preprocessing.fast_spacing_zyx = None


def test_activation_estimate_scale(official):
    # One official decoder on one tile: a few hundred MB to a few GB, not tens of GB.
    one = activation_bytes(official, ["head0"], (112, 96, 128), 1)
    assert 0.3 * GB < one < 3 * GB


def test_long_high_res_scan_with_official_model(official):
    """512x512x2000 at 0.5 mm, 9 heads of 25 classes, patch (112, 96, 128), 1.5 mm model grid.

    The estimate is ~5 GB, set during the network: the input kept as float32 (2 GB), activations
    ~0.9 GB, the uint8 open cells ~0.6 GB, weights and runtime (preparation copies nothing big): refused
    on a 5 GB machine, a warning on 7 GB, fine on 64 GB.
    """
    est = estimate_memory((512, 512, 2000), (0.5, 0.5, 0.5), official, list(official.decoders))
    assert 4 * GB < est.peak_bytes < 6 * GB, est.top_parts()
    assert est.peak_bytes == est.phase_bytes("network")
    with pytest.raises(ResourceError) as info:
        check_memory(est, available_bytes=5 * GB)
    text = str(info.value)
    assert isinstance(info.value, ClnetError) and "\n" not in text
    assert "needs about" in text and "5.0 GB available" in text
    assert "--fast" in text and "fewer anatomies" in text and "more memory" in text
    warnings = check_memory(est, available_bytes=7 * GB)
    assert len(warnings) == 1 and "%" in warnings[0]
    assert check_memory(est, available_bytes=64 * GB) == []
    # Batch 16 multiplies the activations: now too much even for 16 GB.
    big_batch = estimate_memory((512, 512, 2000), (0.5, 0.5, 0.5), official, list(official.decoders), batch_size=16)
    with pytest.raises(ResourceError):
        check_memory(big_batch, available_bytes=16 * GB)


def test_check_memory_thresholds(tiny):
    est = estimate_memory((64, 64, 64), (3.0, 3.0, 3.0), tiny, ["a"])
    need = est.peak_bytes
    assert check_memory(est, available_bytes=int(need / 0.5)) == []
    assert len(check_memory(est, available_bytes=int(need / 0.7))) == 1
    with pytest.raises(ResourceError):
        check_memory(est, available_bytes=int(need / 0.9))


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:   12345678 kB\n")
    assert available_memory(meminfo) == 12345678 * 1024
    real = available_memory()
    assert real is None or real > 0


def test_unknown_decoder_is_a_value_error(tiny):
    with pytest.raises(ValueError, match="unknown decoder"):
        estimate_memory((64, 64, 64), (1, 1, 1), tiny, ["nope"])


# ---------------------------------------------------------------- OOM fallback


class FakeRun:
    """Raises CUDA OOM on CUDA and for batches > 1; records every attempt."""

    def __init__(self, error: type[BaseException] = torch.cuda.OutOfMemoryError, message: str = "CUDA out of memory"):
        self.calls: list[tuple[str, int]] = []
        self.error, self.message = error, message

    def __call__(self, device: torch.device, batch_size: int) -> str:
        self.calls.append((device.type, batch_size))
        if device.type == "cuda" or batch_size > 1:
            raise self.error(self.message)
        return f"done on {device.type} with {batch_size}"


def test_oom_fallback_halves_batch_then_moves_to_cpu():
    run, log = FakeRun(), []
    result = oom_fallback(run, torch.device("cuda:0"), 8, log.append)
    assert result == "done on cpu with 1"
    assert run.calls == [("cuda", 8), ("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert len(log) == 4 and "batch size 4" in log[0] and "CPU" in log[-1]


def test_oom_fallback_recognises_runtime_error_text():
    run = FakeRun(RuntimeError, "CUDA error: out of memory")
    assert oom_fallback(run, torch.device("cuda"), 2, lambda _: None) == "done on cpu with 1"
    assert run.calls == [("cuda", 2), ("cuda", 1), ("cpu", 1)]


def test_oom_fallback_on_cpu_halves_then_gives_a_clear_error():
    calls = []

    def always_oom(device, batch_size):
        calls.append(batch_size)
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 bytes")

    with pytest.raises(ResourceError, match="Out of memory on cpu even with batch size 1"):
        oom_fallback(always_oom, torch.device("cpu"), 4, lambda _: None)
    assert calls == [4, 2, 1]


def test_oom_fallback_lets_other_errors_through():
    def broken(device, batch_size):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        oom_fallback(broken, torch.device("cuda"), 8, lambda _: None)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        oom_fallback(lambda d, b: (_ for _ in ()).throw(RuntimeError("shape mismatch")), torch.device("cpu"), 2,
                     lambda _: None)


def test_oom_fallback_without_cpu_fallback():
    with pytest.raises(ResourceError):
        oom_fallback(FakeRun(), torch.device("cuda"), 1, lambda _: None, cpu_fallback=False)
