"""`clnet models download official` against a loopback stand-in of the model hub (no internet).

The hub (``hub_server.FakeHub``) serves a synthetic official-layout release (``official_release``)
and counts the bytes it sends, so resuming and "downloads nothing" are shown by what was served.
The command runs as a subprocess with ``HF_ENDPOINT`` pointing at the stand-in, a fresh ``HF_HOME``
and ``CLNET_HOME``, as a user would run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from clnet.events import parse_event
from hub_server import FakeHub, closed_port, git_blob_id
from official_release import ENCODER_TASK, RESULTS, build_release, head_task
from test_official_import import TRAINER

HEADS = ["MERGED_ABDOMEN", "Chest_LNS"]
BASE = f"{RESULTS}/clNet/3d_fullres"


def ckpt(task: str) -> str:
    return f"{BASE}/{task}/{TRAINER}/all/model_final_checkpoint.model"


def task_files(task: str, scores: bool = True) -> set[str]:
    files = {ckpt(task), f"{BASE}/{task}/{TRAINER}/plans.json"}
    return files | ({f"{BASE}/{task}/{TRAINER}/bpr_scores.json"} if scores else set())


BPR_FILES = {f"{RESULTS}/public_bpr_model/{n}" for n in ("model.pt", "config.json", "inference-settings.json")}
ENCODER_FILES = task_files(ENCODER_TASK, scores=False)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_release(tmp_path_factory.mktemp("hubrepo") / "repo", HEADS)


@pytest.fixture(scope="module")
def server(release):
    hub = FakeHub(release).start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(server) -> FakeHub:
    server.reset()
    return server


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    import SimpleITK as sitk
    from clnet.data import example_ct

    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(example_ct()))[30:94, 20:76, 50:90], str(path))
    return path


def environment(home: Path, endpoint: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CLNET_"))}
    env.update(CLNET_HOME=str(home / "clnet"), HF_HOME=str(home / "hf"), HF_ENDPOINT=endpoint,
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", HF_HUB_DISABLE_TELEMETRY="1")
    env.update(extra)
    return env


def clnet(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clnet", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def events(stdout: str) -> list[dict]:
    return [e for e in map(parse_event, stdout.splitlines()) if e is not None]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def leftovers(home: Path) -> list[str]:
    """Work folders a run left in the models folder (there must be none)."""
    models = home / "clnet" / "models"
    return sorted(p.name for p in models.glob(".*")) if models.is_dir() else []


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def part_files(home: Path) -> list[Path]:
    return sorted((home / "clnet" / "downloads").rglob("*.part"))


# --------------------------------------------------------------------------- tests
def test_fresh_download_installs_segments_and_second_run_downloads_nothing(hub, tmp_path, small_ct):
    from clnet.checkpoint import verify_model

    env = environment(tmp_path, hub.endpoint)
    proc = clnet(env, "models", "download", "official", "--heads", "abdomen", "Chest_LNS", "--set-default",
                 "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert evs[0]["event"] == "hello" and evs[-1]["event"] == "result"
    result = evs[-1]
    target = tmp_path / "clnet" / "models" / "clnet-official"
    assert result["model"] == "clnet-official" and Path(result["path"]) == target
    assert result["heads"] == sorted(HEADS) and result["commit"] == hub.commit and result["default"] is True
    wanted = ENCODER_FILES | task_files(head_task("MERGED_ABDOMEN")) | task_files(head_task("Chest_LNS")) | BPR_FILES
    # Only what the heads need (no README, sidecar .pkl or progress.png), each body exactly once.
    assert set(hub.body_requests) == wanted and set(hub.body_requests.values()) == {1}
    size = sum(len(hub.files[p]) for p in wanted)
    assert sum(hub.body_bytes.values()) == size == result["release_bytes"] == result["downloaded_bytes"]
    assert result["model_bytes"] == sum(p.stat().st_size for p in target.iterdir())
    per_file = [e for e in evs if e["event"] == "progress" and e.get("file") == ckpt(head_task("Chest_LNS"))]
    assert per_file and per_file[-1]["bytes"] == per_file[-1]["total"] == len(hub.files[ckpt(head_task("Chest_LNS"))])
    fractions = [e["fraction"] for e in evs if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    m = verify_model(target)
    assert list(m.decoders) == HEADS and m.name == "clnet-official"
    assert m.provenance["download"]["commit"] == hub.commit
    assert m.decoders["MERGED_ABDOMEN"].info["bodypart_range_source"].startswith("bpr_scores.json")
    assert m.extra["official"]["bpr_model"]["used"] is True  # the release's body-part network gates this model
    assert m.bodypart is not None and m.bodypart.kind == "bpreg-vgg16" and (target / m.bodypart.file).is_file()
    assert not part_files(tmp_path) and not list((tmp_path / "clnet" / "downloads").rglob("*.model"))
    assert leftovers(tmp_path) == []

    out = tmp_path / "seg"
    proc = clnet(env, "segment", str(small_ct), "-o", str(out), "--model", "clnet-official", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "segmentation.json").read_text())["settings"]["model"] == "clnet-official"
    plain = tmp_path / "plain"
    proc = clnet(env, "segment", str(small_ct), "-o", str(plain), "--progress", "none")  # the default now
    assert proc.returncode == 0, proc.stderr
    assert json.loads((plain / "segmentation.json").read_text())["settings"]["model"] == "clnet-official"
    assert (plain / "segmentation.nii.gz").read_bytes() == (out / "segmentation.nii.gz").read_bytes()

    hub.reset()
    proc = clnet(env, "models", "download", "official", "--heads", "MERGED_ABDOMEN", "chest-lns")
    assert proc.returncode == 0, proc.stderr
    assert "already up to date" in proc.stdout
    assert sum(hub.body_requests.values()) == 0 and hub.api_requests == 1
    assert verify_model(target).provenance["download"]["commit"] == hub.commit


def test_interrupted_download_resumes(hub, tmp_path):
    """The connection drops half-way through a checkpoint and the hub stays down: the run fails cleanly,
    keeping the finished files and the part file; the next run fetches only the rest, with a Range request."""
    env = environment(tmp_path, hub.endpoint)
    big = ckpt(head_task("MERGED_ABDOMEN"))
    half = len(hub.files[big]) // 2
    hub.cut[big] = half
    hub.down_after_cut = True
    line = one_error_line(clnet(env, "models", "download", "official", "--heads", "abdomen"))
    # huggingface_hub retries the broken transfer once the hub is down; 2.x reports the 503, 1.0 the failed connection.
    assert ("503" in line or "Cannot reach" in line) and "--from" in line and "again" in line
    assert not (tmp_path / "clnet" / "models" / "clnet-official").exists() and leftovers(tmp_path) == []
    parts = part_files(tmp_path)
    assert len(parts) == 1 and parts[0].name.startswith("model_final_checkpoint.model.")
    done = parts[0].stat().st_size
    assert 0 < done <= half
    first = dict(hub.body_bytes)

    hub.reset()
    proc = clnet(env, "models", "download", "official", "--heads", "abdomen")
    assert proc.returncode == 0, proc.stderr
    assert hub.ranges == [(big, done)]
    assert hub.body_bytes[big] == len(hub.files[big]) - done  # only the rest
    assert not (set(first) - {big}) & set(hub.body_requests)  # finished files were not fetched again
    assert "resuming" in proc.stderr and not part_files(tmp_path)


def test_cancel_with_sigterm_leaves_nothing_installed(hub, tmp_path):
    env = environment(tmp_path, hub.endpoint)
    big = ckpt(head_task("Chest_LNS"))
    half = len(hub.files[big]) // 2
    hub.stall[big] = half
    proc = subprocess.Popen([sys.executable, "-m", "clnet", "models", "download", "official", "--heads", "chest_lns",
                             "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert hub.stalled.wait(120), "the download never reached the stalled file"
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in part_files(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the client has written what it received
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=60)
    finally:
        hub.release_stall.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    last = events(out)[-1]
    assert last["event"] == "error" and last["type"] == "CancelledError"
    assert not (tmp_path / "clnet" / "models" / "clnet-official").exists() and leftovers(tmp_path) == []
    parts = part_files(tmp_path)
    assert len(parts) == 1 and 0 < parts[0].stat().st_size <= half  # kept for the next run to continue


def test_corrupted_file_is_refused_and_previous_install_kept(hub, release, tmp_path, monkeypatch):
    from clnet.hub import download_official

    monkeypatch.setenv("CLNET_HOME", str(tmp_path / "clnet"))
    previous = download_official(["Chest_LNS"], source=release)  # an earlier install, from a local copy
    before = folder_hashes(previous.path)
    bad = ckpt(ENCODER_TASK)
    hub.corrupt.add(bad)
    line = one_error_line(clnet(environment(tmp_path, hub.endpoint), "models", "download", "official",
                                "--heads", "abdomen"))
    assert "does not match what the hub records" in line and "sha256" in line and bad in line
    assert folder_hashes(previous.path) == before and leftovers(tmp_path) == []
    assert not part_files(tmp_path) and not list((tmp_path / "clnet" / "downloads").rglob(Path(bad).name))


def test_missing_head_is_listed(release, tmp_path, monkeypatch):
    from clnet.errors import ModelError
    from clnet.hub import download_official

    monkeypatch.setenv("CLNET_HOME", str(tmp_path / "clnet"))
    with pytest.raises(ModelError) as err:
        download_official(["bone", "MERGED_HN1", "abdomen"], source=release)
    msg = str(err.value)
    assert "MERGED_BONE" in msg and "Task906_Bone_decoder" in msg and "MERGED_HN1" in msg
    assert "MERGED_ABDOMEN" not in msg and "--list-heads" in msg and "--from" in msg
    assert not (tmp_path / "clnet" / "models" / "clnet-official").exists()
    with pytest.raises(ModelError, match="MERGED_ABDOMEN = abdomen"):
        download_official(["kidneys"], source=release)


@pytest.mark.parametrize("how", ["server down", "offline"])
def test_no_network_names_from(tmp_path, how):
    if how == "server down":
        env = environment(tmp_path, f"http://127.0.0.1:{closed_port()}")
    else:
        env = environment(tmp_path, f"http://127.0.0.1:{closed_port()}", HF_HUB_OFFLINE="1")
    line = one_error_line(clnet(env, "models", "download", "official"))
    assert "--from" in line
    assert ("Cannot reach the model hub" in line) if how == "server down" else ("offline" in line)
    assert not (tmp_path / "clnet" / "models" / "clnet-official").exists()


def test_offline_uses_a_hub_cache_snapshot(hub, tmp_path):
    """Offline, a copy in the hub cache (as `hf download` leaves it: snapshot links to sha256 blobs) serves."""
    repo = tmp_path / "hf" / "hub" / "models--legendchilli--clNet"
    snap = repo / "snapshots" / hub.commit
    for path, data in hub.files.items():
        blob = repo / "blobs" / (hub.sha256[path] if path in hub.lfs else git_blob_id(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snap / path).parent.mkdir(parents=True, exist_ok=True)
        (snap / path).symlink_to(os.path.relpath(blob, (snap / path).parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(hub.commit)
    env = environment(tmp_path, f"http://127.0.0.1:{closed_port()}", HF_HUB_OFFLINE="1")
    proc = clnet(env, "models", "download", "official", "--heads", "chest_lns", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    result = events(proc.stdout)[-1]
    assert result["heads"] == ["Chest_LNS"] and result["downloaded_bytes"] == 0
    assert any("hub cache" in e.get("text", "") for e in events(proc.stdout) if e["event"] == "message")


def test_from_zip_and_list_heads(hub, release, tmp_path):
    archive = tmp_path / "clnet-release.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(release.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(release).as_posix())
    env = environment(tmp_path, f"http://127.0.0.1:{closed_port()}", HF_HUB_OFFLINE="1")  # no hub needed
    proc = clnet(env, "models", "download", "official", "--from", str(archive), "--heads", "abdomen",
                 "--name", "official-abdomen", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    result = events(proc.stdout)[-1]
    assert result["model"] == "official-abdomen" and result["heads"] == ["MERGED_ABDOMEN"]
    assert result["source"].startswith("archive ") and leftovers(tmp_path) == []
    assert (tmp_path / "clnet" / "models" / "official-abdomen" / "manifest.json").is_file()

    # --list-heads: sizes from the hub's records.
    proc = clnet(environment(tmp_path, hub.endpoint), "models", "download", "official", "--list-heads",
                 "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    heads = {h["head"]: h for h in events(proc.stdout)[-1]["heads"]}
    assert len(heads) == 9 and heads["MERGED_BONE"]["available"] is False
    abdomen = task_files(head_task("MERGED_ABDOMEN"))
    assert heads["MERGED_ABDOMEN"]["size"] == sum(len(hub.files[p]) for p in abdomen)
    assert events(proc.stdout)[-1]["common_bytes"] == sum(len(hub.files[p]) for p in ENCODER_FILES | BPR_FILES)
    assert sum(hub.body_requests.values()) == 0


def test_from_folder_and_unsafe_zip(release, tmp_path, monkeypatch):
    from clnet.errors import ModelError
    from clnet.hub import download_official
    from clnet.registry import resolve_model

    monkeypatch.setenv("CLNET_HOME", str(tmp_path / "clnet"))
    monkeypatch.delenv("CLNET_MODEL", raising=False)
    r = download_official(["chest_lns"], source=release / RESULTS, set_default=True)  # the results/ folder itself
    assert r.heads == ["Chest_LNS"] and r.downloaded_bytes == 0 and r.default
    assert resolve_model(None) == r.path

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escaped.txt", "x")
        zf.writestr("results/README.md", "x")
    with pytest.raises(ModelError, match="unsafe member"):
        download_official(source=evil)
    assert not (tmp_path / "escaped.txt").exists()
    with pytest.raises(ModelError, match="lacks what the requested heads need") as err:
        download_official(["abdomen"], source=release / RESULTS / "public_bpr_model")
    assert "general encoder" in str(err.value)
