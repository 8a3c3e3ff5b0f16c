"""The extension as Slicer installs it: CMake's file lists, a run from the installed copy, metadata.

Slicer's ``slicerMacroBuildScriptedModule`` (through CTK's ``ctkMacroCompilePythonScript``) copies
exactly the SCRIPTS and RESOURCES lists of ``CLNetSegmentation/CMakeLists.txt`` to
``qt-scripted-modules/<relative path>``; nothing else reaches the user. Here CMake runs that file
with a stand-in for the macro that copies the same lists the same way, then a segmentation runs
from the copy in an interpreter that sees no other clnet.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "CLNetSegmentation"
sys.path.insert(0, str(MODULE_DIR))

from CLNetSegmentationLib import metadata  # noqa: E402

STANDIN = textwrap.dedent("""
    cmake_minimum_required(VERSION 3.20)
    project(CLNetInstallProbe NONE)
    set(DEST "${CMAKE_BINARY_DIR}/qt-scripted-modules")
    # Stand-in for Slicer's slicerMacroBuildScriptedModule + CTK's ctkMacroCompilePythonScript:
    # same arguments, same existence check, same copy rule (SCRIPTS get ".py" appended when their
    # extension does not match "py"; each file lands at DEST/<its path relative to the module>).
    macro(slicerMacroBuildScriptedModule)
      cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
      if(MY_SLICER_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "Unknown keywords: ${MY_SLICER_UNPARSED_ARGUMENTS}")
      endif()
      foreach(var SCRIPTS RESOURCES)
        foreach(value ${MY_SLICER_${var}})
          if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value} AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value}.py)
            message(FATAL_ERROR "slicerMacroBuildScriptedModule(${var}) given nonexistent file '${value}'")
          endif()
        endforeach()
      endforeach()
      foreach(file ${MY_SLICER_SCRIPTS})
        get_filename_component(file_ext ${file} EXT)
        if(NOT "${file_ext}" MATCHES "py")
          set(file "${file}.py")
        endif()
        configure_file(${CMAKE_CURRENT_SOURCE_DIR}/${file} ${DEST}/${file} COPYONLY)
        file(APPEND ${CMAKE_BINARY_DIR}/scripts.txt "${file}\\n")
      endforeach()
      foreach(file ${MY_SLICER_RESOURCES})
        configure_file(${CMAKE_CURRENT_SOURCE_DIR}/${file} ${DEST}/${file} COPYONLY)
        file(APPEND ${CMAKE_BINARY_DIR}/resources.txt "${file}\\n")
      endforeach()
    endmacro()
    add_subdirectory(${MODULE_SOURCE_DIR} module)
""")


def _cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    return cmake


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The module folder as Slicer installs it (qt-scripted-modules)."""
    probe = tmp_path_factory.mktemp("probe")
    (probe / "CMakeLists.txt").write_text(STANDIN)
    build = probe / "build"
    done = subprocess.run([_cmake(), "-S", str(probe), "-B", str(build), f"-DMODULE_SOURCE_DIR={MODULE_DIR}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return build / "qt-scripted-modules"


def _listed(installed: Path, name: str) -> set[str]:
    return set((installed.parent / name).read_text().split())


def _package_data() -> set[str]:
    """Files pyproject.toml's [tool.setuptools.package-data] puts in the wheel (paths from the module dir)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    files = set()
    for package, patterns in config["tool"]["setuptools"]["package-data"].items():
        base = MODULE_DIR / package.replace(".", "/")
        for pattern in patterns:
            files |= {str(p.relative_to(MODULE_DIR)).replace(os.sep, "/") for p in base.glob(pattern) if p.is_file()}
    return files


def test_every_engine_file_is_installed(installed):
    scripts, resources = _listed(installed, "scripts.txt"), _listed(installed, "resources.txt")
    sources = {str(p.relative_to(MODULE_DIR)).replace(os.sep, "/")
               for folder in ("clnet", "CLNetSegmentationLib") for p in (MODULE_DIR / folder).rglob("*.py")}
    assert sources | {"CLNetSegmentation.py"} == scripts
    data = _package_data()
    assert data, "pyproject.toml lists no package data"
    missing = sorted(data - resources)
    assert not missing, f"packaged by pyproject.toml but not installed by CMake: {missing}"
    extra = sorted(r for r in resources - data if not r.startswith("Resources/"))
    assert not extra, f"installed by CMake but not packaged by pyproject.toml: {extra}"
    for needed in ("clnet/bodypart/weights/bpr_demo.safetensors", "clnet/official/official_decoders.tsv",
                   "clnet/data/example_ct.nii.gz", "clnet/catalog/SegmentationCategoryTypeModifier-CLNet.term.json",
                   "clnet/models/demo/manifest.json", "Resources/Icons/CLNetSegmentation.png"):
        assert needed in resources
    for relative in scripts | resources:
        assert (installed / relative).read_bytes() == (MODULE_DIR / relative).read_bytes(), relative


def test_package_data_patterns_match_files():
    """Each package-data pattern matches something (a renamed file must not silently drop out)."""
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in config["tool"]["setuptools"]["package-data"]["clnet"]:
        assert list((MODULE_DIR / "clnet").glob(pattern)), f"package-data pattern {pattern!r} matches nothing"


DRIVER = textwrap.dedent("""
    # Runs with python -I -S: no site-packages processing, so no editable or pip-installed clnet.
    import importlib.util, os, runpy, sys
    installed, site_dirs = sys.argv[1], sys.argv[2].split(os.pathsep)
    assert importlib.util.find_spec("clnet") is None, "a clnet is importable before the installed folder is added"
    sys.path.insert(0, installed)
    sys.path.extend(site_dirs)  # torch & co., without their .pth hooks
    import clnet
    from CLNetSegmentationLib.process_job import engineRoot
    print("clnet from", clnet.__file__, "engine root", engineRoot(), file=sys.stderr, flush=True)
    sys.argv = ["clnet.worker", *sys.argv[3:]]
    runpy.run_module("clnet.worker", run_name="__main__", alter_sys=True)
""")


def test_segmentation_runs_from_the_installed_copy_alone(installed, tmp_path):
    from clnet.events import parse_event

    site_dirs = os.pathsep.join(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    ct = installed / "clnet" / "data" / "example_ct.nii.gz"
    out = tmp_path / "out"
    command = [sys.executable, "-I", "-S", str(driver), str(installed), site_dirs,
               "segment", str(ct), "-o", str(out), "--device", "cpu", "--fast",
               "--anatomies", "UrinaryBladder", "Bone_Hip_L", "--progress", "json"]
    # stdin stays open (a pipe): the worker exits when it closes, as when Slicer dies.
    worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    stdout, stderr = _communicate_keeping_stdin(worker)
    assert worker.returncode == 0, stderr.decode()[-3000:]
    events = [e for e in (parse_event(line) for line in stdout.splitlines()) if e]
    result = [e for e in events if e["event"] == "result"]
    assert result and set(result[0]["present"]) <= {"UrinaryBladder", "Bone_Hip_L"}
    match = re.search(r"clnet from (\S+) engine root (\S+)", stderr.decode())
    assert match, stderr.decode()[-2000:]
    assert Path(match.group(1)).resolve() == (installed / "clnet" / "__init__.py").resolve()
    assert Path(match.group(2)).resolve() == installed.resolve()
    settings = json.loads((out / "segmentation.json").read_text())["settings"]
    assert Path(settings["model_dir"]).resolve() == (installed / "clnet" / "models" / "demo").resolve()
    assert settings["bodypart_gating"]["used"], "the installed body-part model was not used"


def _communicate_keeping_stdin(process: subprocess.Popen, timeout: float = 600) -> tuple[bytes, bytes]:
    """Read stdout and stderr to the end without closing stdin (closing it would stop the worker)."""
    import threading

    chunks: dict[str, bytes] = {}

    def drain(name: str, stream) -> None:
        chunks[name] = stream.read()

    threads = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", process.stdout), ("err", process.stderr))]
    for thread in threads:
        thread.start()
    process.wait(timeout=timeout)
    for thread in threads:
        thread.join(timeout=30)
    process.stdin.close()
    return chunks.get("out", b""), chunks.get("err", b"")


# -- metadata: one source (metadata.py), literal copies checked --------------------------------------


def test_cmake_s4ext_and_json_agree_with_metadata():
    cmake = (ROOT / "CMakeLists.txt").read_text()

    def cmake_value(name: str) -> str:
        # The same pattern the Extensions Index checker uses: a literal quoted string.
        match = re.search(rf'set\s*\({name}\s*"([^"]+)"\s*\)', cmake)
        assert match, f"{name} is not a literal quoted string in CMakeLists.txt"
        return match.group(1)

    assert re.search(r"project\s*\(\s*CLNetExtension\s*\)", cmake)
    assert cmake_value("EXTENSION_HOMEPAGE") == metadata.DOCS_URL
    assert cmake_value("EXTENSION_ICONURL") == metadata.ICON_URL
    assert cmake_value("EXTENSION_SCREENSHOTURLS") == metadata.SCREENSHOT_URL
    assert cmake_value("EXTENSION_CONTRIBUTORS") == ", ".join(metadata.CONTRIBUTORS)
    assert cmake_value("EXTENSION_DEPENDS") == "PyTorch"
    assert f"Slicer {metadata.MINIMUM_SLICER} or newer" in cmake_value("EXTENSION_DESCRIPTION")

    s4ext = dict(line.split(" ", 1) for line in (ROOT / "CLNetExtension.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    assert s4ext["scmurl"] == metadata.REPOSITORY_URL + ".git" and s4ext["scmrevision"] == metadata.BRANCH
    assert s4ext["homepage"] == metadata.DOCS_URL and s4ext["iconurl"] == metadata.ICON_URL
    assert s4ext["screenshoturls"] == metadata.SCREENSHOT_URL and s4ext["depends"] == "PyTorch"
    assert s4ext["contributors"] == cmake_value("EXTENSION_CONTRIBUTORS")

    raw = (ROOT / "CLNetExtension.json").read_bytes()
    assert b"\r" not in raw  # the index refuses CR line endings
    entry = json.loads(raw)
    schema = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
              "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
    assert {"$schema", "category", "scm_url"} <= entry.keys() <= schema.keys()  # v1.0.1: no other keys
    assert all(isinstance(entry[k], schema[k]) for k in entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["scm_url"] == metadata.REPOSITORY_URL and entry["scm_revision"] == metadata.BRANCH
    assert entry["category"] == cmake_value("EXTENSION_CATEGORY") == "Segmentation"
    assert entry["build_dependencies"] == ["PyTorch"]

    repository_files = {metadata.ICON_URL: ROOT / "Resources/Icons/CLNetExtension.png",
                        metadata.SCREENSHOT_URL: ROOT / "docs/images/slicer_panel.png"}
    for url, path in repository_files.items():
        assert url == f"{metadata.RAW_URL}/{path.relative_to(ROOT).as_posix()}" and path.is_file()


def test_license_help_and_contributors():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    assert metadata.DOCS_URL in metadata.HELP_TEXT and "5.10" in metadata.HELP_TEXT
    assert all(re.fullmatch(r".+ \(.+\)", c) for c in metadata.CONTRIBUTORS)  # "Name (Organisation)"
    module = (MODULE_DIR / "CLNetSegmentation.py").read_text()
    assert "metadata.HELP_TEXT" in module and "metadata.CONTRIBUTORS" in module
    assert len(module.splitlines()) <= 300


def test_docs_state_the_supported_slicer():
    docs = (ROOT / "docs" / "slicer.md").read_text()
    assert f"Slicer {metadata.MINIMUM_SLICER} or newer" in docs and "Python 3.12" in docs
    assert not fnmatch.filter(docs.splitlines(), "*Slicer 5.8 or newer*")


def test_terminology_file_is_up_to_date_and_valid_json():
    from clnet.catalog import load_catalog
    from clnet.catalog.terminology import TERMINOLOGY_FILE, TERMINOLOGY_SCHEMA, terminology_file_text

    text = TERMINOLOGY_FILE.read_text(encoding="utf-8")
    assert text == terminology_file_text(load_catalog()), (
        "stale: python -c 'from clnet.catalog.terminology import write_terminology_file as w; w()'")
    data = json.loads(text)
    assert data["@schema"] == TERMINOLOGY_SCHEMA
    (category,) = data["SegmentationCodes"]["Category"]
    assert (category["CodingSchemeDesignator"], category["CodeValue"]) == ("SCT", "123037004")
    for kind in category["Type"]:
        assert {"CodeMeaning", "CodingSchemeDesignator", "CodeValue"} <= kind.keys()
        assert ("Modifier" in kind) != ("recommendedDisplayRGBValue" in kind)
        assert len(kind["CodeValue"]) <= 16 and len(kind["CodeMeaning"]) <= 64  # DICOM SH / LO
