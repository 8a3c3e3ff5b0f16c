"""`clnet models` (list / verify NAME|DIR / default) and the model resolution order; the release plan."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clnet.errors import ModelError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLNET_MODEL", raising=False)
    return tmp_path / "home"


def test_resolution_order(home, tiny_model_dir, monkeypatch):
    from clnet.registry import BUNDLED_MODELS_DIR, install_model, resolve_model, set_default_model

    assert resolve_model(None) == BUNDLED_MODELS_DIR / "demo"
    installed = install_model(tiny_model_dir, name="tiny")
    set_default_model("tiny")
    assert json.loads((home / "config.json").read_text()) == {"default_model": "tiny"}
    assert resolve_model(None) == installed  # the user default beats the bundled demo
    monkeypatch.setenv("CLNET_MODEL", "demo")
    assert resolve_model(None) == BUNDLED_MODELS_DIR / "demo"  # $CLNET_MODEL beats the default
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir  # --model beats everything
    monkeypatch.delenv("CLNET_MODEL")
    with pytest.raises(ModelError, match="No installed model is named 'nope'"):
        set_default_model("nope")
    import shutil

    shutil.rmtree(installed)
    with pytest.raises(ModelError, match="is not installed any more"):
        resolve_model(None)
    set_default_model(None)
    assert resolve_model(None) == BUNDLED_MODELS_DIR / "demo"


def test_broken_config_is_a_clear_error(home):
    from clnet.registry import resolve_model

    home.mkdir(parents=True)
    (home / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="Cannot read the clnet settings file"):
        resolve_model(None)


def test_install_replaces_atomically(home, tiny_model_dir, tmp_path):
    from clnet.registry import install_model

    first = install_model(tiny_model_dir, name="m")
    before = (first / "manifest.json").read_bytes()
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_model_dir, broken)
    (broken / json.loads((broken / "manifest.json").read_text())["encoder"]["file"]).write_bytes(b"tampered")
    with pytest.raises(ModelError):
        install_model(broken, name="m", overwrite=True)
    assert (first / "manifest.json").read_bytes() == before  # the installed model is untouched
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]


def test_models_cli_default_list_verify(home, tiny_model_dir, capsys):
    from clnet.cli import main

    assert main(["models", "install", str(tiny_model_dir), "--name", "tiny"]) == 0
    assert main(["models", "verify", "demo"]) == 0  # a name, not only a folder
    assert "OK: demo" in capsys.readouterr().out
    assert main(["models", "verify", str(tiny_model_dir)]) == 0
    assert main(["models", "verify", "missing-model"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["models", "default"]) == 0
    assert "none set" in capsys.readouterr().out
    assert main(["models", "default", "tiny"]) == 0
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "* tiny" in out and "  demo" in out
    assert main(["models", "default"]) == 0
    assert str(home / "models" / "tiny") in capsys.readouterr().out
    assert main(["models", "default", "--unset"]) == 0
    assert main(["models"]) == 0  # bare `clnet models` lists
    assert "* tiny" not in capsys.readouterr().out


def test_models_module_is_light():
    """The models command's own module pulls in neither torch, MONAI nor huggingface_hub to list."""
    code = ("import sys, argparse; import clnet.models_cli as m; p = argparse.ArgumentParser(); "
            "s = p.add_subparsers(dest='command'); m.register(s); a = p.parse_args(['models', 'list']); a.func(a); "
            "print(sorted(k for k in ('torch', 'monai', 'huggingface_hub') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_heads_by_official_or_friendly_name():
    from clnet.hub import resolve_heads

    assert len(resolve_heads(None)) == 9
    assert resolve_heads(["abdomen", "MERGED_BONE", "chest-lns", "hn_lns", "merged_hn1", "abdomen"]) == [
        "MERGED_ABDOMEN", "MERGED_BONE", "Chest_LNS", "HN_LNS", "MERGED_HN1"]
    with pytest.raises(ModelError, match="Unknown head"):
        resolve_heads(["liver"])


def test_plan_finds_the_tree_anywhere_and_picks_the_importers_checkpoint():
    from clnet.hub.release import CHECKPOINT_NAMES, Release, ReleaseFile
    from clnet.official import importer

    assert CHECKPOINT_NAMES == importer.CHECKPOINT_NAMES  # the same preference as the importer
    t = "clNetTrainerV2_SelectiveChannelDA_Continual_Decoding_Ensemble__clNetPlans"
    paths = [
        f"deep/er/Task001_SuperGeneralEncoder/{t}/plans.json",
        f"deep/er/Task001_SuperGeneralEncoder/{t}/fold_0/model_final_checkpoint.model",
        f"deep/er/Task001_SuperGeneralEncoder/{t}/all/model_latest.model",
        f"deep/er/Task905_Abdomen_decoder/{t}/plans.json",
        f"deep/er/Task905_Abdomen_decoder/{t}/bpr_scores.json",
        f"deep/er/Task905_Abdomen_decoder/{t}/all/model_best.model",
        f"deep/er/Task905_Abdomen_decoder/{t}/all/model_best.model.pkl",
        "deep/public_bpr_model/model.pt", "deep/public_bpr_model/config.json",
        "old/public_bpr_model/x/public_bpr_model/model.pt",
    ]
    release = Release([ReleaseFile(p, 10) for p in paths], "test")
    plan = release.plan(["MERGED_ABDOMEN"])
    got = {f.path for f in plan.files}
    assert f"deep/er/Task001_SuperGeneralEncoder/{t}/all/model_latest.model" in got  # all/ before fold_0/
    assert f"deep/er/Task905_Abdomen_decoder/{t}/all/model_best.model" in got
    assert not any(p.endswith(".pkl") for p in got) and "deep/public_bpr_model/model.pt" in got
    assert plan.root == "deep" and plan.size == 10 * len(got)
    with pytest.raises(ModelError, match="MERGED_BONE: task folder Task906_Bone_decoder"):
        release.plan(["MERGED_BONE"])
