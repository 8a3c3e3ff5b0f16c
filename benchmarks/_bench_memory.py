"""Peak memory against scan length for ``bench_inference.py``: each configuration runs once in a
fresh interpreter (``bench_inference.py --child``) so peaks do not mix; the parent prints the table."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk
import torch
from _bench_engines import ClnetEngine, NnunetEngine, Scenario
from _bench_setup import cached_image, describe_image, tile_z

CHILD_MARK = "BENCH_CHILD_RESULT "
BENCH_SCRIPT = Path(__file__).resolve().parent / "bench_inference.py"

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
        engine = ClnetEngine(Path(spec["model_dir"]), spec["device"], gating=False,
                             precision=spec.get("precision", "auto"))
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
    cmd = [sys.executable, str(BENCH_SCRIPT), "--child", json.dumps(spec)]
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


def memory_section(args, say, md_table, *, medium: Path | None, real_ct: Path, model_dir: Path, device, threads: int,
                   workdir: Path, nnunet_ok: bool, nnunet_note: str | None) -> list[dict]:
    """Run and print the memory table; returns its rows as dicts for the JSON."""
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
                        "device": str(device), "threads": threads, "overlap": args.overlap, "precision": args.precision,
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
    return memory
