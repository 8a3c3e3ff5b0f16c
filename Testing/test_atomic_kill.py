"""kill -9 during ``write_label_image``: the target is always the old file or a complete new one.

A subprocess rewrites the same ``.nii.gz`` over and over (a few MB each time, every generation
stamped into slice 0); we SIGKILL it at random moments and then read the target back. It must be
readable, have the right size and hold exactly one generation's content. Temp files that a killed
writer could not clean up are allowed, but only under ``atomic_write``'s temp naming pattern.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from clnet.io import write_label_image

SIZE_ZYX = (64, 256, 256)
KILLS = 5
TEMP_PATTERN = re.compile(r"^\.segmentation\.nii\.gz\.tmp-[0-9a-f]{8}\.nii\.gz$")

_WRITER = r"""
import sys
import numpy as np
import SimpleITK as sitk
from clnet.io import write_label_image

target, seed, z, y, x = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
base = np.random.default_rng(seed).integers(0, 40, (z, y, x), dtype=np.uint8)
gen = int(sys.argv[6])
while True:
    gen += 1
    base[0] = gen % 256
    image = sitk.GetImageFromArray(base)
    image.SetSpacing((0.8, 0.8, 2.0))
    print(gen, flush=True)  # about to write generation `gen`
    write_label_image(image, target)
"""


def labels(seed: int, gen: int) -> np.ndarray:
    base = np.random.default_rng(seed).integers(0, 40, SIZE_ZYX, dtype=np.uint8)
    base[0] = gen % 256
    return base


def check_complete(path: Path, seed: int, gens: range) -> int:
    """The generation held by ``path``; fails if the file is partial or not one of ``gens``."""
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == SIZE_ZYX[::-1]
    array = sitk.GetArrayFromImage(image)
    gen_mod = int(array[0, 0, 0])
    assert np.all(array[0] == gen_mod), "slice 0 is not one generation"
    expected = labels(seed, gen_mod)
    assert np.array_equal(array[1:], expected[1:]), "voxel data differs: partial or mixed file"
    candidates = [g for g in gens if g % 256 == gen_mod]
    assert candidates, f"generation {gen_mod} was never written"
    return candidates[-1]


def test_kill_during_write_leaves_old_or_new_file(tmp_path):
    rng = random.Random(1234)
    seed = 5
    target = tmp_path / "segmentation.nii.gz"
    first = sitk.GetImageFromArray(labels(seed, 0))
    first.SetSpacing((0.8, 0.8, 2.0))
    write_label_image(first, target)
    assert target.stat().st_size > 1_000_000  # "a few MB": the write takes a while

    gen = 0  # generation numbers are never reused across writers
    previous = 0  # generation the target held before this writer started
    held = []
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target), str(seed), *map(str, SIZE_ZYX), str(gen)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            started = int(proc.stdout.readline())  # the first write has begun
            time.sleep(rng.uniform(0.0, 0.8))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        announced = [started, *(int(v) for v in proc.stdout.read().split())]
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        held_gen = check_complete(target, seed, range(0, max(announced) + 1))
        # Either what it held before, or a generation this writer finished (possibly the last one).
        assert held_gen == previous or started <= held_gen <= max(announced)
        held.append(held_gen)
        previous, gen = held_gen, max(announced)

    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != target.name)
    assert all(TEMP_PATTERN.match(name) for name in leftovers), leftovers
    # Report what a kill leaves behind: atomic_write cannot remove its temp file when killed.
    print(f"generations held after each kill: {held}; stale temp files left: {len(leftovers)}")
