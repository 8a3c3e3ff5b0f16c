#!/usr/bin/env python
"""Inference benchmark for the clnet engine (issue 8).

Measures, in one run on one input, with warm-up excluded and the median of ``--repeats`` runs:

1. the CL-Net engine on the full anatomy set, on one anatomy and on one region, in normal and fast mode;
2. the same jobs done by an nnU-Net v2 ensemble (one full nnU-Net per CL-Net decoder group, nnU-Net's
   own predictor, random weights, same spacing / patch / layout / tile overlap, no mirroring), and the
   ratio of the two (skipped with a clear line when ``nnunetv2`` is not importable);
3. the time per stage (read, check, prepare = crop/resample/normalise, network, merge, resample back,
   write) for the full anatomy set;
4. peak RSS (and peak VRAM on CUDA) against scan length: the real CT (or its 512×512 version) tiled
   1×, 3×, 6× along z, each configuration in a fresh subprocess so peaks do not mix.

It prints markdown tables and, with ``--json PATH``, writes every number to a JSON file.
See benchmarks/README.md for how to run it and what the columns mean.

    python benchmarks/bench_inference.py --quick                    # tiny settings, a couple of minutes
    python benchmarks/bench_inference.py --size realistic --repeats 3 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for _nnunet_baseline and _bench_setup

from _bench_setup import (  # noqa: E402
    cached_image,
    clnet_work_gflops,
    describe_image,
    find_real_ct,
    nnunet_specs,
    prepare_model,
    realistic_ct,
    tile_z,
)

CHILD_MARK = "BENCH_CHILD_RESULT "
MODES = ("normal", "fast")


# --------------------------------------------------------------------------------------------------
# memory helpers


def _proc_status_kib(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (VmHWM; ru_maxrss where /proc is missing)."""
    kib = _proc_status_kib("VmHWM")
    if kib is None:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux
    return kib / 1024.0


def current_rss_mib() -> float | None:
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


# --------------------------------------------------------------------------------------------------
# the two engines


class ResampleBackTimer:
    """Wraps the Segmenter's label → input-grid resampling so its time can be split out of ``merge``."""

    def __init__(self) -> None:
        import clnet.inference.segmenter as segmenter_module

        self.seconds = 0.0
        original = segmenter_module.labels_to_input_grid

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        segmenter_module.labels_to_input_grid = timed


@dataclass
class Scenario:
    key: str  # full / anatomy / region
    label: str
    anatomies: list[str] | None = None
    regions: list[str] | None = None


@dataclass
class Measure:
    """All timed repeats of one (engine, scenario, mode)."""

    engine: str
    scenario: str
    mode: str
    decoders: list[str] = field(default_factory=list)
    tiles: int = 0
    runs: dict[str, int] = field(default_factory=dict)  # CL-Net: tiles the encoder / each decoder ran on
    total_s: list[float] = field(default_factory=list)
    stages_s: list[dict[str, float]] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.total_s)

    def stage_median(self, stage: str) -> float:
        return statistics.median(s.get(stage, 0.0) for s in self.stages_s)

    def to_dict(self) -> dict:
        stages = sorted({k for s in self.stages_s for k in s})
        return {
            "engine": self.engine, "scenario": self.scenario, "mode": self.mode, "decoders": self.decoders,
            "tiles": self.tiles, "tiles_run": self.runs, "repeats": len(self.total_s), "total_s": [round(v, 4) for v in self.total_s],
            "median_total_s": round(self.median(), 4),
            "median_stages_s": {k: round(self.stage_median(k), 4) for k in stages},
        }


class ClnetEngine:
    def __init__(self, model_dir: Path, device: str, gating: bool = True) -> None:
        from clnet import Segmenter

        t = time.perf_counter()
        self.segmenter = Segmenter(model_dir, device=device, gating=gating)
        self.load_seconds = time.perf_counter() - t
        self.timer = ResampleBackTimer()

    def run(self, path: Path, scenario: Scenario, fast: bool, overlap: float | None, write_to: Path | None = None,
            progress=None):
        from clnet.outputs import save_result

        self.timer.seconds = 0.0
        t = time.perf_counter()
        result = self.segmenter.segment(str(path), anatomies=scenario.anatomies, regions=scenario.regions, fast=fast,
                                        overlap=overlap, progress=progress)
        total = time.perf_counter() - t
        stages = dict(result.timings)
        stages["resample_back"] = self.timer.seconds
        stages["merge"] = stages.get("merge", 0.0) - self.timer.seconds
        if write_to is not None:
            source = sitk.ReadImage(str(path))  # untimed: save_result needs the input for its geometry only
            t = time.perf_counter()
            save_result(result, write_to, source, formats=("nifti",))
            stages["write"] = time.perf_counter() - t
        return total, stages, result


class NnunetEngine:
    def __init__(self, manifest, root: Path, overlap: float, device, modes: Sequence[str]) -> None:
        from _nnunet_baseline import NnUNetEnsemble

        self.manifest = manifest
        self.ensembles = {m: NnUNetEnsemble(nnunet_specs(manifest, m == "fast"), root / m, overlap, device)
                          for m in modes}
        self.load_seconds = sum(e.load_seconds for e in self.ensembles.values())

    def run(self, path: Path, decoders: Sequence[str], requested: Sequence[str], mode: str):
        from clnet.catalog import load_catalog
        from clnet.inference.merge import decoder_lookup
        from clnet.io import read_image

        t = time.perf_counter()
        image = read_image(path).image
        read = time.perf_counter() - t
        catalog = load_catalog()
        labels_by_name = {a.name: a.label for a in catalog}
        wanted = set(requested)
        lookups = {
            d: decoder_lookup([catalog.by_name(n).name for n in self.manifest.decoders[d].anatomies], labels_by_name,
                              wanted)
            for d in decoders
        }
        prep = self.manifest.decoder_preprocessing(decoders[0]) if decoders else self.manifest.preprocessing
        _, stages, tiles = self.ensembles[mode].run(image, lookups, prep, fast=mode == "fast")
        total = time.perf_counter() - t
        return total, {"read": read, **stages}, tiles


# --------------------------------------------------------------------------------------------------
# memory against scan length (one fresh subprocess per configuration)


# The Segmenter's progress texts, by stage (their first word).
_STAGE_OF_TEXT = {"Reading": "read", "Checking": "check", "Resampling": "prepare", "Running": "network",
                  "Network:": "network", "Mapping": "merge", "Done": "merge"}


class StagePeaks:
    """The process's peak RSS (VmHWM) at the end of each Segmenter stage: the stage in which the value
    last rises is the one that sets the peak."""

    def __init__(self) -> None:
        self.stage = "load"
        self.hwm_mib: dict[str, float] = {}

    def __call__(self, text: str, fraction: float) -> None:
        stage = _STAGE_OF_TEXT.get(text.split(" ", 1)[0], self.stage)
        if stage != self.stage:
            self.hwm_mib[self.stage] = round(peak_rss_mib(), 1)
            self.stage = stage

    def finish(self) -> dict:
        self.hwm_mib[self.stage] = round(peak_rss_mib(), 1)
        final = max(self.hwm_mib.values())
        setter = next(s for s, v in self.hwm_mib.items() if v >= final - 0.5)
        return {"hwm_by_stage_mib": dict(self.hwm_mib), "peak_set_in": setter}


def child_main(spec: dict) -> None:
    """Run one configuration once and print its peaks (called in a fresh interpreter)."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    from clnet.checkpoint import read_manifest
    from clnet.inference.device import select_device

    device = select_device(spec["device"])
    path = Path(spec["input"])
    fast = spec["mode"] == "fast"
    out: dict = {"engine": spec["engine"]}
    if spec["engine"] == "clnet":
        # Body-part gating off: every decoder on every tile, the worst case for memory.
        engine = ClnetEngine(Path(spec["model_dir"]), spec["device"], gating=False)
        baseline = current_rss_mib()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        peaks = StagePeaks()
        total, stages, result = engine.run(path, Scenario("full", "full"), fast, spec["overlap"], progress=peaks)
        out.update(tiles=result.settings["tiles"], decoders=result.settings["decoders_run"], **peaks.finish())
    else:
        from _nnunet_baseline import configure_environment

        configure_environment(int(spec.get("threads") or torch.get_num_threads()), Path(spec["nnunet_root"]))
        manifest = read_manifest(Path(spec["model_dir"]))
        overlap = manifest.preprocessing.overlap if spec["overlap"] is None else spec["overlap"]
        engine = NnunetEngine(manifest, Path(spec["nnunet_root"]), overlap, device, [spec["mode"]])
        baseline = current_rss_mib()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        decoders = list(manifest.decoders)
        total, stages, tiles = engine.run(path, decoders, list(manifest.anatomy_owner()), spec["mode"])
        out.update(tiles=tiles, decoders=decoders)
    out.update(wall_s=round(total, 3), peak_rss_mib=round(peak_rss_mib(), 1),
               rss_after_load_mib=None if baseline is None else round(baseline, 1),
               stages_s={k: round(v, 3) for k, v in stages.items()})
    if device.type == "cuda":
        out["peak_vram_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["peak_vram_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    print(CHILD_MARK + json.dumps(out), flush=True)


def run_child(spec: dict, timeout: float | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"engine": spec["engine"], "status": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(CHILD_MARK):
            res = json.loads(line[len(CHILD_MARK):])
            res["status"] = "ok"
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
    return {"engine": spec["engine"], "status": f"failed: {why}: {' | '.join(tail)}",
            "wall_s": round(time.perf_counter() - t, 3)}


# --------------------------------------------------------------------------------------------------
# output


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="official-random",
                   help="official-random (default; dense decoders), official-pruned (decoders at quarter width), "
                        "demo (the bundled model) or a clnet model folder")
    p.add_argument("--size", choices=("small", "medium", "realistic"), default="small",
                   help="small = the real CT as is (122×101×112, 3 mm); medium = the real CT at 512×512 and 1.5 mm "
                        "slices (512×512×224); realistic = medium repeated along z (512×512×448)")
    p.add_argument("--ct", help="the real CT (default: shared/data/example_ct.nii.gz, or $CLNET_BENCH_CT)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    p.add_argument("--nnunet-repeats", type=int, default=None,
                   help="timed runs of the nnU-Net ensemble (default: --repeats; it is the slow side)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per engine and mode before timing")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--overlap", type=float, default=None, help="tile overlap for both engines (default: the model's)")
    p.add_argument("--anatomy", default="Liver", help="the one-anatomy scenario (default Liver)")
    p.add_argument("--region", default="thorax",
                   help="the one-region scenario (default thorax: three official decoders share the encoder)")
    p.add_argument("--no-nnunet", action="store_true", help="skip the nnU-Net v2 ensemble")
    p.add_argument("--no-memory", action="store_true", help="skip peak memory against scan length")
    p.add_argument("--no-timing", action="store_true",
                   help="only the memory part (skip subsets, comparison and stage times)")
    p.add_argument("--memory-scales", default="1,3,6",
                   help="scan lengths (copies of the base scan along z; fractions cut the last copy short)")
    p.add_argument("--memory-base", choices=("small", "medium"), default="small",
                   help="the scan that is repeated: the real CT as is, or its 512×512 1.5 mm version (224 slices)")
    p.add_argument("--memory-engines", default="clnet,nnunet", help="engines measured for memory")
    p.add_argument("--memory-mode", choices=MODES, default=None,
                   help="mode of the memory runs (default normal; fast with --quick)")
    p.add_argument("--memory-timeout", type=float, default=None, help="seconds before a memory run is given up")
    p.add_argument("--quick", action="store_true",
                   help="validation only: small CT, 1 repeat, official layout at 1/8 width, patch 32×64×64, "
                        "4.5/6 mm spacing, memory at 1× and 3× in fast mode, 1 thread unless --threads")
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    p.add_argument("--workdir", type=Path,
                   help="keep generated models and inputs here (reused by later runs); default: a temporary folder")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeats = "small", 1
        if args.threads is None:
            args.threads = 1  # a shared, loaded machine: more threads than free cores only adds waiting
        if args.memory_mode is None:
            args.memory_mode = "fast"
        if args.memory_scales == "1,3,6":
            args.memory_scales = "1,3"
        if args.model in ("official-random", "official-pruned"):
            args.model += "-quick"
    args.memory_mode = args.memory_mode or "normal"
    args.nnunet_repeats = args.repeats if args.nnunet_repeats is None else args.nnunet_repeats
    if args.repeats < 1 or args.nnunet_repeats < 1 or args.warmup < 0:
        p.error("--repeats and --nnunet-repeats must be at least 1 and --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clnet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _benchmark(args, workdir, threads)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _benchmark(args: argparse.Namespace, workdir: Path, threads: int) -> int:
    import clnet
    from clnet.inference.device import describe_device, select_device

    started = time.perf_counter()
    device = select_device(args.device)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    real_ct = find_real_ct(args.ct)
    medium = None
    if args.size != "small" or args.memory_base == "medium":
        medium = cached_image(workdir / "inputs" / "medium_512x512x224.nii.gz",
                              lambda: realistic_ct(sitk.ReadImage(str(real_ct)), min_slices=0))
    if args.size == "realistic":
        source = cached_image(workdir / "inputs" / "realistic_512x512x448.nii.gz",
                              lambda: realistic_ct(sitk.ReadImage(str(real_ct))))
    else:
        source = medium if args.size == "medium" else real_ct
    model_dir = prepare_model(args.model, args.quick, workdir)

    say(f"# clnet inference benchmark ({'quick validation' if args.quick else args.size})")
    say()
    clnet_engine = ClnetEngine(model_dir, str(device))
    manifest = clnet_engine.segmenter.manifest
    seg = clnet_engine.segmenter
    prep = manifest.preprocessing
    overlap = prep.overlap if args.overlap is None else args.overlap
    meta = {
        "clnet_version": clnet.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": threads,
        "device": describe_device(device), "model": manifest.name, "model_dir": str(model_dir),
        "decoders": len(manifest.decoders), "outputs": sum(len(d.anatomies) for d in manifest.decoders.values()),
        "encoder_features": list(manifest.encoder.features), "patch_zyx": list(prep.patch_size_zyx),
        "spacing_zyx": list(prep.spacing_zyx),
        "fast_spacing_zyx": list(prep.fast_spacing_zyx) if prep.fast_spacing_zyx else None,
        "overlap": overlap, "repeats": args.repeats, "warmup": args.warmup, "input": describe_image(source),
        "quick": args.quick, "loadavg_start": list(load_start) if load_start else None,
        "clnet_load_s": round(clnet_engine.load_seconds, 3),
    }
    say(f"- model: {manifest.name} ({meta['decoders']} decoders, {meta['outputs']} outputs, encoder "
        f"{meta['encoder_features']}, patch {meta['patch_zyx']}, spacing {meta['spacing_zyx']} / fast "
        f"{meta['fast_spacing_zyx']}, overlap {overlap})")
    say(f"- input: {source.name} {meta['input']['size_xyz']} at {meta['input']['spacing_xyz']} mm")
    say(f"- device: {meta['device']}, torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPU(s); "
        f"load average at start {meta['loadavg_start']}")
    say(f"- {args.repeats} timed repeat(s) of CL-Net, {args.nnunet_repeats} of the nnU-Net ensemble; "
        f"{args.warmup} warm-up run(s) per engine and mode (excluded)")

    # scenarios ---------------------------------------------------------------------------------------
    available = {a.name for a in seg.available}
    anatomy = args.anatomy
    try:
        anatomy_names = [a.name for a in seg.resolve([anatomy], None)]
    except Exception:
        anatomy_names = [seg.available[0].name]
        say(f"- {anatomy!r} is not offered by this model; the one-anatomy scenario uses {anatomy_names[0]}")
    region = args.region
    try:
        seg.resolve(None, [region])
    except Exception:
        region = seg.catalog.by_name(anatomy_names[0]).region
        say(f"- region {args.region!r} has nothing in this model; the one-region scenario uses {region!r}")
    scenarios = [
        Scenario("full", f"full set ({len(available)})"),
        Scenario("anatomy", f"one anatomy ({anatomy_names[0]})", anatomies=anatomy_names),
        Scenario("region", f"one region ({region})", regions=[region]),
    ]
    modes = list(MODES) if prep.fast_spacing_zyx else ["normal"]
    if "fast" not in modes:
        say("- this model has no fast mode; fast-mode rows are skipped")

    nnunet_engine = None
    nnunet_ok = False
    nnunet_note = None
    if args.no_nnunet:
        nnunet_note = "skipped (--no-nnunet)"
    else:
        from _nnunet_baseline import configure_environment, import_error, nnunet_version

        configure_environment(threads, workdir / "nnunet")
        err = import_error()
        if err:
            nnunet_note = f"skipped: nnunetv2 is not importable ({err})"
        else:
            nnunet_ok = True
            meta["nnunet_version"] = nnunet_version()
            if not args.no_timing:
                nnunet_engine = NnunetEngine(manifest, workdir / "nnunet", overlap, device, modes)
                meta["nnunet_load_s"] = round(nnunet_engine.load_seconds, 3)
            nnunet_note = (f"nnunetv2 {meta['nnunet_version']}: {len(manifest.decoders)} PlainConvUNets per mode, "
                           f"tile_step_size {1 - overlap:g}, no mirroring, "
                           f"perform_everything_on_device={device.type == 'cuda'}")
    say(f"- nnU-Net v2 ensemble: {nnunet_note}")
    say()

    measures: dict[tuple[str, str, str], Measure] = {}
    comparison: list[dict] = []
    if args.no_timing:
        say("Timing sections skipped (--no-timing).")
        say()
    else:
        requested = {s.key: [a.name for a in seg.resolve(s.anatomies, s.regions)] for s in scenarios}

        def clnet_once(s: Scenario, mode: str, record: bool) -> None:
            write_to = workdir / "out" / mode if (record and s.key == "full") else None
            total, stages, result = clnet_engine.run(source, s, mode == "fast", args.overlap, write_to)
            m = measures.setdefault(("clnet", s.key, mode), Measure("clnet", s.key, mode))
            m.decoders, m.tiles = list(result.settings["decoders_run"]), int(result.settings["tiles"])
            m.runs = dict(result.settings["tiles_run"])
            if record:
                m.total_s.append(total)
                m.stages_s.append(stages)

        def nnunet_once(s: Scenario, mode: str, record: bool) -> None:
            decoders = measures[("clnet", s.key, mode)].decoders
            total, stages, tiles = nnunet_engine.run(source, decoders, requested[s.key], mode)
            m = measures.setdefault(("nnunet", s.key, mode), Measure("nnunet", s.key, mode))
            m.decoders, m.tiles = list(decoders), tiles
            if record:
                m.total_s.append(total)
                m.stages_s.append(stages)

        t = time.perf_counter()
        cheapest = scenarios[1]
        for mode in modes:
            for _ in range(args.warmup):
                clnet_once(cheapest, mode, record=False)
                if nnunet_engine:
                    nnunet_engine.ensembles[mode].warm_up(list(manifest.decoders))
                    nnunet_once(cheapest, mode, record=False)
        meta["warmup_s"] = round(time.perf_counter() - t, 3)
        for r in range(max(args.repeats, args.nnunet_repeats)):
            for mode in modes:
                for s in scenarios:
                    if r < args.repeats:
                        clnet_once(s, mode, record=True)
                    if nnunet_engine and r < args.nnunet_repeats:
                        nnunet_once(s, mode, record=True)
            say(f"- repeat {r + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s since start)")
        say()

        # tables ------------------------------------------------------------------------------------------
        label = {s.key: s.label for s in scenarios}
        rows = []
        for mode in modes:
            for s in scenarios:
                m = measures[("clnet", s.key, mode)]
                dec_runs = sum(v for k, v in m.runs.items() if k != "encoder")
                rows.append([label[s.key], mode, len(m.decoders), m.tiles, f"{m.runs.get('encoder', 0)} / {dec_runs}",
                             m.median(), m.stage_median("network"), min(m.total_s), max(m.total_s)])
        say("## CL-Net engine: anatomy subsets (seconds, median)")
        say()
        say(md_table(["scenario", "mode", "decoders", "tiles", "encoder / decoder tiles run", "total s", "network s",
                      "min s", "max s"], rows))
        say()

        say("## CL-Net vs nnU-Net v2 ensemble (one nnU-Net per decoder group)")
        say()
        if nnunet_engine is None:
            say(f"nnU-Net v2 baseline {nnunet_note}.")
        else:
            from _nnunet_baseline import tile_gflops

            model_gflops = {d: tile_gflops(spec) for d, spec in nnunet_specs(manifest, False).items()}
            rows = []
            for mode in modes:
                for s in scenarios:
                    c, n = measures[("clnet", s.key, mode)], measures[("nnunet", s.key, mode)]
                    ratio = n.median() / c.median()
                    net_ratio = n.stage_median("network") / max(c.stage_median("network"), 1e-9)
                    c_gflop = clnet_work_gflops(manifest, c.runs)
                    n_gflop = sum(model_gflops[d] for d in n.decoders) * n.tiles / max(1, len(n.decoders))
                    comparison.append({"scenario": s.key, "mode": mode, "decoders": len(c.decoders),
                                       "clnet_gflop": round(c_gflop, 1), "nnunet_gflop": round(n_gflop, 1),
                                       "ratio_gflop": round(n_gflop / max(c_gflop, 1e-9), 3),
                                       "clnet_total_s": round(c.median(), 4), "nnunet_total_s": round(n.median(), 4),
                                       "ratio_total": round(ratio, 3), "clnet_network_s": round(c.stage_median("network"), 4),
                                       "nnunet_network_s": round(n.stage_median("network"), 4),
                                       "ratio_network": round(net_ratio, 3), "clnet_tiles": c.tiles,
                                       "nnunet_tiles": n.tiles})
                    rows.append([label[s.key], mode, len(c.decoders), f"{c.tiles} / {n.tiles}", c.median(), n.median(),
                                 f"{ratio:.2f}×", c.stage_median("network"), n.stage_median("network"),
                                 f"{net_ratio:.2f}×", f"{c_gflop:.4g} / {n_gflop:.4g}", f"{n_gflop / max(c_gflop, 1e-9):.2f}×"])
            say(md_table(["scenario", "mode", "models", "tiles CL-Net / nnU-Net (all models)", "CL-Net s", "nnU-Net s",
                          "nnU-Net ÷ CL-Net", "CL-Net network s", "nnU-Net network s", "network ratio",
                          "GFLOP CL-Net / nnU-Net", "GFLOP ratio"], rows))
            say()
            say(f"Model loading (not in the times above): CL-Net {meta['clnet_load_s']:.2f} s, "
                f"nnU-Net ensemble {meta['nnunet_load_s']:.2f} s for {len(modes)} mode(s).")
        say()

        say("## Time per stage, full anatomy set (seconds, median)")
        say()

        def stage_table(engine: str, title: str, stages: Sequence[str], total: str) -> None:
            full = [measures[(engine, "full", mode)] for mode in modes]
            rows = [[st] + [m.stage_median(st) for m in full] for st in stages]
            rows.append([total] + [m.median() for m in full])
            say(title)
            say()
            say(md_table(["stage"] + list(modes), rows))
            say()

        stage_table("clnet", "CL-Net engine:",
                    ["read", "check", "prepare", "network", "merge", "resample_back", "write"],
                    "**total (without write)**")
        if nnunet_engine is not None:
            stage_table("nnunet", "nnU-Net v2 ensemble:",
                        ["read", "prepare", "nnunet_preprocess", "network", "export", "resample_back", "merge"],
                        "**total**")

    # memory ------------------------------------------------------------------------------------------
    memory = []
    say(f"## Peak memory against scan length (full anatomy set, {args.memory_mode} mode, body-part gating off, "
        "fresh process each)")
    say()
    if args.no_memory:
        say("Skipped (--no-memory).")
    else:
        base_path = medium if args.memory_base == "medium" else real_ct
        base = sitk.ReadImage(str(base_path))
        scales = [float(v) for v in args.memory_scales.split(",") if v.strip()]
        engines = [e.strip() for e in args.memory_engines.split(",") if e.strip()]
        if "nnunet" in engines and not nnunet_ok:
            engines.remove("nnunet")
            say(f"nnU-Net memory runs {nnunet_note}.")
            say()
        rows = []
        for n in scales:
            path = base_path if n == 1 else cached_image(workdir / "inputs" / f"{base_path.name[:-7]}_{n:g}x.nii.gz",
                                                          lambda n=n: tile_z(base, n))
            info = describe_image(path)
            for eng in engines:
                spec = {"engine": eng, "model_dir": str(model_dir), "input": str(path), "mode": args.memory_mode,
                        "device": str(device), "threads": threads, "overlap": args.overlap,
                        "nnunet_root": str(workdir / "nnunet")}
                res = run_child(spec, args.memory_timeout)
                res.update(scale=n, input_size_xyz=info["size_xyz"])
                memory.append(res)
                vram = res.get("peak_vram_allocated_mib", "–")
                rows.append([f"{n:g}×", "×".join(map(str, info["size_xyz"])), eng, res.get("tiles", "–"),
                             res.get("peak_rss_mib", "–"), res.get("rss_after_load_mib", "–"), vram,
                             res.get("peak_set_in", "–"), res.get("wall_s", "–"), res["status"]])
                say(f"- memory {n:g}× {eng}: {res['status']}")
        say()
        say(md_table(["scan", "input voxels (x×y×z)", "engine", "tiles", "peak RSS MiB", "RSS after load MiB",
                      "peak VRAM MiB", "peak set in", "wall s", "status"], rows))
    say()
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    meta["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    say(f"Benchmark wall time {meta['benchmark_wall_s']:.0f} s; load average at end {meta['loadavg_end']}.")

    if args.json:
        payload = {"meta": meta, "nnunet": nnunet_note, "measures": [m.to_dict() for m in measures.values()],
                   "comparison": comparison, "memory": memory}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
        say(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
