"""Model folders: round trip, sha256 tamper refusal, architecture mismatch, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from clnet.checkpoint import load_model, save_model, sha256_file
from clnet.errors import ModelError
from clnet.model.factory import build_manifest, random_network, tiny_encoder
from clnet.registry import install_model, resolve_model


@pytest.fixture()
def model_dir(tmp_path):
    m = build_manifest("t", tiny_encoder(), {"a": ["Liver", "Spleen"], "b": ["Bone_Vert_L1"]})
    net = random_network(m, seed=1)
    save_model(net, m, tmp_path / "model")
    return tmp_path / "model", net


def test_round_trip_is_exact(model_dir):
    path, net = model_dir
    loaded = load_model(path)
    ref = net.state_dict()
    got = loaded.network.state_dict()
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "clnet-model" and manifest["demo"] is True and manifest["clinical_use"] is False
    assert manifest["encoder"]["sha256"] == sha256_file(path / "encoder.safetensors")
    assert manifest["decoders"]["a"]["anatomies"] == ["Liver", "Spleen"]
    assert sorted(p.name for p in path.iterdir()) == [
        "decoder_a.safetensors", "decoder_b.safetensors", "encoder.safetensors", "manifest.json"]


def test_only_named_decoders_are_loaded(model_dir):
    loaded = load_model(model_dir[0], decoders=["b"])
    assert list(loaded.network.decoders) == ["b"]


def test_tampered_file_is_refused(model_dir):
    path, _ = model_dir
    data = bytearray((path / "decoder_b.safetensors").read_bytes())
    data[-1] ^= 1
    (path / "decoder_b.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its sha256"):
        load_model(path)


def test_wrong_architecture_is_refused_with_names(model_dir, tmp_path):
    path, _ = model_dir
    other = build_manifest("t", tiny_encoder(), {"a": ["Liver", "Spleen", "Kidney_L"], "b": ["Bone_Vert_L1"]})
    save_model(random_network(other), other, tmp_path / "other")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["decoders"]["a"]["file"] = "decoder_a.safetensors"
    # Swap in the other model's decoder file with a matching sha256: the shapes must still be refused.
    (path / "decoder_a.safetensors").write_bytes((tmp_path / "other" / "decoder_a.safetensors").read_bytes())
    manifest["decoders"]["a"]["sha256"] = sha256_file(path / "decoder_a.safetensors")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"wrong shape.*head\.weight"):
        load_model(path)


def test_unsafe_file_names_and_missing_files(model_dir):
    path, _ = model_dir
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["encoder"]["file"] = "../encoder.safetensors"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="unsafe file"):
        load_model(path)
    manifest["encoder"]["file"] = "gone.safetensors"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="missing"):
        load_model(path)


def test_copy_from_keeps_old_files_byte_identical(model_dir, tmp_path):
    path, net = model_dir
    loaded = load_model(path)
    from clnet.manifest import DecoderEntry
    from clnet.model import DecoderConfig

    manifest = loaded.manifest
    cfg = DecoderConfig.default_for(manifest.encoder, 2)
    loaded.network.add_decoder("new", cfg)
    manifest.decoders["new"] = DecoderEntry("new", ["Kidney_R"], cfg)
    save_model(loaded.network, manifest, tmp_path / "grown", copy_from=path)
    for f in ("encoder.safetensors", "decoder_a.safetensors", "decoder_b.safetensors"):
        assert sha256_file(tmp_path / "grown" / f) == sha256_file(path / f)
    assert list(load_model(tmp_path / "grown").network.decoders) == ["a", "b", "new"]


def test_existing_output_is_not_overwritten(model_dir):
    path, net = model_dir
    with pytest.raises(ModelError, match="already exists"):
        save_model(net, load_model(path).manifest, path)


def test_install_and_resolve(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CLNET_HOME", str(tmp_path / "home"))
    target = install_model(model_dir[0], name="mine")
    assert resolve_model("mine") == target
    with pytest.raises(ModelError, match="already installed"):
        install_model(model_dir[0], name="mine")
    with pytest.raises(ModelError, match="not found"):
        resolve_model("nothing-like-this")


def test_zip_with_path_traversal_is_refused(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("CLNET_HOME", str(tmp_path / "home"))
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(ModelError, match="unsafe member"):
        install_model(bad)
    assert not (tmp_path / "home" / "evil.txt").exists()


def test_no_model_message(monkeypatch, tmp_path):
    import clnet.registry as reg

    monkeypatch.delenv("CLNET_MODEL", raising=False)
    monkeypatch.setattr(reg, "BUNDLED_MODELS_DIR", tmp_path / "none")
    with pytest.raises(ModelError, match="No model is installed.*clnet models install"):
        reg.resolve_model(None)


def test_manifest_and_catalog_import_without_torch():
    """The Slicer panel lists models and anatomies before torch is installed."""
    import subprocess
    import sys

    code = ("import sys; import clnet.registry, clnet.manifest, clnet.catalog, clnet.model.config; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
