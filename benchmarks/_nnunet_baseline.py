"""The nnU-Net v2 side of ``bench_inference.py``: one full nnU-Net per CL-Net decoder group.

Each group gets a real nnU-Net v2 "trained model folder" written to a temporary directory:
``dataset.json``, ``plans.json`` (a ``3d_fullres`` configuration with the CL-Net model's spacing,
patch size and encoder layout as a ``PlainConvUNet``) and ``fold_all/checkpoint_final.pth`` with
random weights. The folder is loaded with ``nnUNetPredictor.initialize_from_trained_model_folder``,
so the network class, the preprocessing, the sliding window and the export are nnU-Net's own.

The ensemble is deployed the way TotalSegmentator deploys nnU-Net: the CT is resampled once to the
models' spacing (here with clnet's own orient → body crop → resample, so both engines see the same
grid and the same tiles), every model runs on that grid (nnU-Net's own resampling is then a no-op
and its logits never have to be resampled to the input grid, which would not fit in memory for
222 classes on a 512×512×450 scan), and each model's label map is mapped back to the input grid
with nearest-neighbour resampling and merged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"


def configure_environment(threads: int, scratch: Path) -> None:
    """Settings nnU-Net reads from the environment when it is imported (call before importing it)."""
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, threads)))
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(var, str(scratch))


def import_error() -> str | None:
    """None when nnU-Net v2 can be used, else why not (one line)."""
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        recursive_find_trainer_class_by_name(TRAINER)
    except Exception as exc:  # ImportError, or a missing dependency deeper down
        return f"{type(exc).__name__}: {exc}"
    return None


def nnunet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class ModelSpec:
    """What one nnU-Net of the ensemble must look like (axis order z, y, x throughout)."""

    name: str
    num_classes: int  # with background
    spacing_zyx: tuple[float, float, float]
    patch_zyx: tuple[int, int, int]
    features: tuple[int, ...]
    kernels: tuple[tuple[int, int, int], ...]
    strides: tuple[tuple[int, int, int], ...]
    convs_per_stage: int
    ct_properties: dict = field(default_factory=dict)


def _plans(spec: ModelSpec) -> dict:
    n = len(spec.features)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(spec.features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [list(k) for k in spec.kernels],
            "strides": [list(s) for s in spec.strides],
            "n_conv_per_stage": [spec.convs_per_stage] * n,
            "n_conv_per_stage_decoder": [spec.convs_per_stage] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    linear = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": f"bench_{spec.name}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(spec.patch_zyx),
        "median_image_size_in_voxels": list(spec.patch_zyx),
        "spacing": list(spec.spacing_zyx),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {**linear, "order": 3},
        "resampling_fn_seg_kwargs": {**linear, "is_seg": True},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": linear,
        "architecture": arch,
        "batch_dice": False,
    }
    ct = {"max": 3000.0, "mean": -187.853, "median": -100.0, "min": -1024.0, "percentile_00_5": -995.0,
          "percentile_99_5": 1265.0, "std": 490.705, **spec.ct_properties}
    return {
        "dataset_name": f"Dataset999_{spec.name}",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spec.spacing_zyx),
        "original_median_shape_after_transp": list(spec.patch_zyx),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": ct},
    }


def _dataset(spec: ModelSpec) -> dict:
    labels = {"background": 0, **{f"class_{i}": i for i in range(1, spec.num_classes)}}
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}


def write_model_folder(spec: ModelSpec, folder: Path, seed: int = 0) -> Path:
    """A trained-model folder nnU-Net can load, with random weights built by nnU-Net's own trainer code."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    checkpoint = folder / "fold_all" / "checkpoint_final.pth"
    plans, dataset = _plans(spec), _dataset(spec)
    stamp = folder / "bench_spec.json"
    wanted = json.dumps({"plans": plans, "dataset": dataset, "seed": seed}, sort_keys=True)
    if checkpoint.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return folder  # made by an earlier run with the same settings
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    manager = PlansManager(plans)
    trainer = recursive_find_trainer_class_by_name(TRAINER)
    torch.manual_seed(seed)
    network = trainer.build_network_architecture(
        manager, manager.get_configuration(CONFIGURATION), 1, manager.get_label_manager(dataset).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    torch.save(
        {
            "network_weights": network.state_dict(),
            "trainer_name": TRAINER,
            "init_args": {"configuration": CONFIGURATION},
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        checkpoint,
    )
    stamp.write_text(wanted)
    return folder


def tile_gflops(spec: ModelSpec) -> float:
    """Floating-point operations (GFLOP) of one forward pass on one patch, counted on the meta device."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch.utils.flop_counter import FlopCounterMode

    manager = PlansManager(_plans(spec))
    config = manager.get_configuration(CONFIGURATION)
    with torch.device("meta"):
        network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                         config.network_arch_init_kwargs_req_import, 1, spec.num_classes,
                                         allow_init=False, deep_supervision=False)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            network(torch.empty(1, 1, *spec.patch_zyx))
    return counter.get_total_flops() / 1e9


@dataclass
class LoadedNet:
    spec: ModelSpec
    predictor: object  # nnUNetPredictor


class NnUNetEnsemble:
    """One nnU-Net per decoder group, loaded once; ``run`` segments with the groups asked for."""

    def __init__(self, specs: dict[str, ModelSpec], root: Path, overlap: float, device: torch.device) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.device = device
        self.overlap = overlap
        self.nets: dict[str, LoadedNet] = {}
        t = time.perf_counter()
        for i, (name, spec) in enumerate(specs.items()):
            folder = write_model_folder(spec, root / name, seed=100 + i)
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a CPU notice per model
                predictor = nnUNetPredictor(
                    tile_step_size=1.0 - overlap,
                    use_gaussian=True,
                    use_mirroring=False,
                    perform_everything_on_device=device.type == "cuda",
                    device=device,
                    verbose=False,
                    verbose_preprocessing=False,
                    allow_tqdm=False,
                )
            predictor.initialize_from_trained_model_folder(str(folder), use_folds=("all",))
            self.nets[name] = LoadedNet(spec, predictor)
        self.load_seconds = time.perf_counter() - t

    def tiles(self, shape_zyx: Sequence[int], name: str) -> int:
        predictor = self.nets[name].predictor
        padded = [max(s, p) for s, p in zip(shape_zyx, self.nets[name].spec.patch_zyx)]
        return len(predictor._internal_get_sliding_window_slicers(tuple(padded)))

    def warm_up(self, names: Sequence[str]) -> None:
        """One forward pass per network on one patch (fills the conv kernel caches)."""
        with torch.inference_mode():
            for name in names:
                net = self.nets[name]
                x = torch.zeros((1, 1, *net.spec.patch_zyx), device=self.device)
                net.predictor.network.to(self.device).eval()(x)

    def run(self, image: sitk.Image, lookups: dict[str, np.ndarray], prep, fast: bool) -> tuple[np.ndarray, dict, int]:
        """Segment ``image`` with the nnU-Nets named in ``lookups`` (model → table of head-local value →
        catalog label, 0 where not requested); returns (labels z,y,x, stage seconds, tiles).

        ``prep`` is the CL-Net model's :class:`Preprocessing`, used for the shared resampling so that
        both engines work on the same grid.
        """
        from clnet.inference.preprocessing import labels_to_input_grid, prepare
        from clnet.manifest import Normalization
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        timings = dict.fromkeys(("prepare", "nnunet_preprocess", "network", "export", "resample_back", "merge"), 0.0)
        t = time.perf_counter()
        hu = replace(prep, normalization=Normalization(-1e6, 1e6, 0.0, 1.0))  # keep Hounsfield units
        prepared = prepare(image, hu, fast=fast)
        spacing = list(prepared.grid.GetSpacing())[::-1]
        data = prepared.data[None]
        timings["prepare"] += time.perf_counter() - t

        merged = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint16)
        tiles = 0
        for name, lookup in lookups.items():
            net = self.nets[name]
            p = net.predictor
            t = time.perf_counter()
            pre = p.configuration_manager.preprocessor_class(verbose=False)
            x, _, props = pre.run_case_npy(data, None, {"spacing": spacing}, p.plans_manager, p.configuration_manager,
                                           p.dataset_json)
            timings["nnunet_preprocess"] += time.perf_counter() - t
            tiles += self.tiles(x.shape[1:], name)

            t = time.perf_counter()
            logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(x)).cpu()
            timings["network"] += time.perf_counter() - t

            t = time.perf_counter()
            seg = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, p.plans_manager, p.configuration_manager, p.label_manager, props)
            del logits
            timings["export"] += time.perf_counter() - t

            t = time.perf_counter()
            back = sitk.GetArrayFromImage(labels_to_input_grid(np.ascontiguousarray(seg.astype(np.uint8)),
                                                               prepared.grid, image))
            timings["resample_back"] += time.perf_counter() - t

            t = time.perf_counter()
            values = lookup[back]
            np.copyto(merged, values, where=values > 0)
            timings["merge"] += time.perf_counter() - t
        return merged, timings, tiles
