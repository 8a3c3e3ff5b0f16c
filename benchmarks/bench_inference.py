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
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for _nnunet_baseline and _bench_setup

from _bench_engines import ClnetEngine, Measure, NnunetEngine, Scenario  # noqa: E402
from _bench_memory import child_main, memory_section  # noqa: E402
from _bench_setup import (  # noqa: E402
    cached_image,
    clnet_work_gflops,
    describe_image,
    find_real_ct,
    medium_ct,
    nnunet_specs,
    prepare_model,
    realistic_ct,
)

MODES = ("normal", "fast")


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
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bf16"),
                   help="the Segmenter's precision (auto: float32 on the CPU, bf16 on a GPU)")
    p.add_argument("--locate", default="auto", choices=("auto", "on", "off"),
                   help="coarse localisation pass for the subset scenarios; auto = the Segmenter's default (on), "
                        "except off for random-weight models, whose coarse pass labels the whole body")
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
        medium = medium_ct(real_ct, workdir)
    if args.size == "realistic":
        source = cached_image(workdir / "inputs" / "realistic_512x512x448.nii.gz",
                              lambda: realistic_ct(sitk.ReadImage(str(real_ct))))
    else:
        source = medium if args.size == "medium" else real_ct
    model_dir = prepare_model(args.model, args.quick, workdir)

    say(f"# clnet inference benchmark ({'quick validation' if args.quick else args.size})")
    say()
    random_weights = args.model.removesuffix("-quick") in ("official-random", "official-pruned")
    locate = {"on": True, "off": False}.get(args.locate, False if random_weights else None)
    clnet_engine = ClnetEngine(model_dir, str(device), precision=args.precision, locate=locate)
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
        "clnet_load_s": round(clnet_engine.load_seconds, 3), "precision": args.precision,
        "locate": {None: "auto (on for subsets)", True: "on", False: "off"}[locate],
    }
    say(f"- model: {manifest.name} ({meta['decoders']} decoders, {meta['outputs']} outputs, encoder "
        f"{meta['encoder_features']}, patch {meta['patch_zyx']}, spacing {meta['spacing_zyx']} / fast "
        f"{meta['fast_spacing_zyx']}, overlap {overlap})")
    say(f"- input: {source.name} {meta['input']['size_xyz']} at {meta['input']['spacing_xyz']} mm")
    say(f"- device: {meta['device']}, torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPU(s); "
        f"load average at start {meta['loadavg_start']}")
    say(f"- {args.repeats} timed repeat(s) of CL-Net, {args.nnunet_repeats} of the nnU-Net ensemble; "
        f"{args.warmup} warm-up run(s) per engine and mode (excluded)")
    say(f"- precision {args.precision}; coarse localisation pass for subsets: {meta['locate']}"
        + (" (random weights label the whole body, so the pass would find no smaller box: its saving needs a "
           "trained model, see the demo-model run)" if random_weights and locate is False else ""))

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
            m.coarse_tiles = int(result.settings["locate"].get("tiles_run", {}).get("encoder", 0))
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
                             m.coarse_tiles or "–", m.median(), m.stage_median("network"), min(m.total_s),
                             max(m.total_s)])
        say("## CL-Net engine: anatomy subsets (seconds, median)")
        say()
        say(md_table(["scenario", "mode", "decoders", "tiles", "encoder / decoder tiles run", "coarse-pass tiles",
                      "total s", "network s", "min s", "max s"], rows))
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
                    ["read", "check", "locate", "prepare", "network", "merge", "resample_back", "write"],
                    "**total (without write)**")
        if nnunet_engine is not None:
            stage_table("nnunet", "nnU-Net v2 ensemble:",
                        ["read", "prepare", "nnunet_preprocess", "network", "export", "resample_back", "merge"],
                        "**total**")

    memory = memory_section(args, say, md_table, medium=medium, real_ct=real_ct, model_dir=model_dir, device=device,
                            threads=threads, workdir=workdir, nnunet_ok=nnunet_ok, nnunet_note=nnunet_note)
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
