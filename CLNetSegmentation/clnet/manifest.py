"""The model manifest: everything needed to rebuild and run a model, as plain JSON.

A model is a directory holding ``manifest.json``, one safetensors file for the encoder and one per
decoder. Adding a decoder = adding a file and an entry under ``decoders``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ModelError
from .model.config import DecoderConfig, EncoderConfig

FORMAT_NAME = "clnet-model"
FORMAT_VERSION = 2
"""The newest manifest format this clnet reads. A manifest is written as format 2 only when it uses
what format 1 readers would get wrong without noticing (user anatomies, decoders that replace
another's anatomies); every other model stays format 1, readable by older clnet versions."""
MANIFEST_NAME = "manifest.json"


@dataclass
class Normalization:
    """CT intensity normalization: clip to [clip_low, clip_high] HU, then (x - mean) / std."""

    clip_low: float = -1024.0
    clip_high: float = 1500.0
    mean: float = 0.0
    std: float = 1.0

    def to_dict(self) -> dict:
        return {"clip_low": self.clip_low, "clip_high": self.clip_high, "mean": self.mean, "std": self.std}


@dataclass
class Preprocessing:
    """How a CT is brought to the network's grid. Sizes and spacings are in (z, y, x) order."""

    spacing_zyx: tuple[float, float, float] = (1.5, 1.5, 1.5)
    fast_spacing_zyx: tuple[float, float, float] | None = None
    patch_size_zyx: tuple[int, int, int] = (112, 96, 128)
    orientation: str = "LPS"
    normalization: Normalization = field(default_factory=Normalization)
    overlap: float = 0.5
    gaussian_sigma_scale: float = 0.125
    body_threshold_hu: float = -500.0
    pad_value: float | None = None  # normalised value for padding; None = the normalised clip_low (air)
    #: The patch the official body crop enlarges its box by (an imported head's plans patch size, in
    #: voxels of the input); None: ``patch_size_zyx``. Used only by ``OfficialCompat.body_crop``.
    crop_patch_zyx: tuple[int, int, int] | None = None

    def normalized(self, hu: float) -> float:
        """Where an HU value lands after this model's normalisation."""
        n = self.normalization
        return float((min(max(hu, n.clip_low), n.clip_high) - n.mean) / n.std)

    def padding_value(self) -> float:
        if self.pad_value is not None:
            return float(self.pad_value)
        return self.normalized(self.normalization.clip_low)

    def to_dict(self) -> dict:
        return {
            "spacing_zyx": list(self.spacing_zyx),
            "fast_spacing_zyx": list(self.fast_spacing_zyx) if self.fast_spacing_zyx else None,
            "patch_size_zyx": list(self.patch_size_zyx),
            "orientation": self.orientation,
            "normalization": self.normalization.to_dict(),
            "overlap": self.overlap,
            "gaussian_sigma_scale": self.gaussian_sigma_scale,
            "body_threshold_hu": self.body_threshold_hu,
            "pad_value": self.pad_value,
            **({"crop_patch_zyx": list(self.crop_patch_zyx)} if self.crop_patch_zyx else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        fast = d.get("fast_spacing_zyx")
        return cls(
            spacing_zyx=tuple(float(v) for v in d["spacing_zyx"]),
            fast_spacing_zyx=tuple(float(v) for v in fast) if fast else None,
            patch_size_zyx=tuple(int(v) for v in d["patch_size_zyx"]),
            orientation=d.get("orientation", "LPS"),
            normalization=Normalization(**d.get("normalization", {})),
            overlap=float(d.get("overlap", 0.5)),
            gaussian_sigma_scale=float(d.get("gaussian_sigma_scale", 0.125)),
            body_threshold_hu=float(d.get("body_threshold_hu", -500.0)),
            pad_value=None if d.get("pad_value") is None else float(d["pad_value"]),
            crop_patch_zyx=tuple(int(v) for v in d["crop_patch_zyx"]) if d.get("crop_patch_zyx") else None,
        )


#: Each official-compatibility option and the values it takes: clnet's own behaviour first, then
#: the official CL-Net pipeline's (docs/official.md, "Official-compatible inference").
COMPAT_CHOICES: dict[str, tuple[str, str]] = {
    "tile_padding": ("end", "centred"),  # a volume smaller than a patch: padded at the end / centred
    "gaussian": ("clnet", "official"),  # the tiles' importance map
    "tile_steps": ("clnet", "official"),  # where the tiles start
    "image_resampling": ("linear", "spline3"),  # the image onto the model grid
    "body_crop": ("clnet", "official"),  # the box the network runs in
    "air_tiles": ("skip", "run"),  # tiles with nothing above the body threshold
}


@dataclass(frozen=True)
class OfficialCompat:
    """Where inference follows the official CL-Net pipeline instead of clnet's own choices.

    The defaults are clnet's; :meth:`official` turns every option to the official behaviour (what
    ``clnet import-official`` records for imported models). Stored in the manifest under
    ``inference.official_compat`` only when some option differs from clnet's.
    """

    tile_padding: str = "end"
    gaussian: str = "clnet"
    tile_steps: str = "clnet"
    image_resampling: str = "linear"
    body_crop: str = "clnet"
    air_tiles: str = "skip"

    @classmethod
    def official(cls) -> OfficialCompat:
        return cls(**{k: v[1] for k, v in COMPAT_CHOICES.items()})

    @property
    def enabled(self) -> bool:
        """Whether any option differs from clnet's own behaviour."""
        return self != OfficialCompat()

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in COMPAT_CHOICES}

    @classmethod
    def from_dict(cls, d: dict) -> OfficialCompat:
        if not isinstance(d, dict):
            raise ModelError(f"manifest.json: inference.official_compat must be an object, not {d!r}.",
                             "Re-create or re-install the model.")
        unknown = sorted(set(d) - set(COMPAT_CHOICES))
        bad = {k: v for k, v in d.items() if k in COMPAT_CHOICES and v not in COMPAT_CHOICES[k]}
        if unknown or bad:
            raise ModelError(f"manifest.json has unknown official-compatibility settings ({unknown or bad}).",
                             "Allowed: " + "; ".join(f"{k}: {' or '.join(v)}" for k, v in COMPAT_CHOICES.items()) + ".")
        return cls(**{k: str(v) for k, v in d.items()})


@dataclass
class DecoderEntry:
    """One decoding head: output channel i (1-based) is ``anatomies[i - 1]`` (catalog names)."""

    name: str
    anatomies: list[str]
    config: DecoderConfig
    file: str = ""
    sha256: str = ""
    bodypart_range: tuple[float, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: Each anatomy's own body-part window (optional): a decoder run for only some of its anatomies
    #: is gated by the union of theirs instead of its own, so a subset runs on fewer slices.
    anatomy_bodypart_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Anatomies this decoder corrects: anatomy → the decoder that output it before. At inference the
    #: replacement alone decides that anatomy; the old decoder's channel for it is ignored.
    replaces: dict[str, str] = field(default_factory=dict)

    def window_for(self, requested: Iterable[str]) -> tuple[float, float] | None:
        """The body-part window to gate this decoder by when ``requested`` of its anatomies are wanted.

        All of them wanted (or a wanted one without a window of its own): the decoder's own window,
        as the official pipeline gates a head. Some of them: the union of their windows, kept inside
        the decoder's own.
        """
        requested = set(requested)
        wanted = [a for a in self.anatomies if a in requested]
        ranges = [self.anatomy_bodypart_ranges.get(a) for a in wanted]
        if not wanted or len(set(wanted)) == len(set(self.anatomies)) or any(r is None for r in ranges):
            return self.bodypart_range
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        if self.bodypart_range is not None:
            lo, hi = max(lo, self.bodypart_range[0]), min(hi, self.bodypart_range[1])
            if lo > hi:  # inconsistent statistics: fall back to the decoder's own window
                return self.bodypart_range
        return (float(lo), float(hi))

    def to_dict(self) -> dict:
        return {
            "anatomies": list(self.anatomies),
            "architecture": self.config.to_dict(),
            "file": self.file,
            "sha256": self.sha256,
            "bodypart_range": list(self.bodypart_range) if self.bodypart_range else None,
            **({"anatomy_bodypart_ranges": {a: [float(r[0]), float(r[1])] for a, r in self.anatomy_bodypart_ranges.items()}}
               if self.anatomy_bodypart_ranges else {}),
            **({"replaces": dict(self.replaces)} if self.replaces else {}),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict) -> DecoderEntry:
        rng = d.get("bodypart_range")
        stray = sorted(set(d.get("anatomy_bodypart_ranges") or {}) - set(d["anatomies"]))
        if stray:
            raise ModelError(f"manifest.json gives body-part windows for {stray[:3]}, which decoder {name} "
                             "does not output.", "Re-create or re-install the model.")
        replaces = {str(a): str(o) for a, o in (d.get("replaces") or {}).items()}
        if set(replaces) - set(d["anatomies"]):
            raise ModelError(f"manifest.json: decoder {name} replaces {sorted(set(replaces) - set(d['anatomies']))}, "
                             "which it does not output.", "Re-create or re-install the model.")
        return cls(
            name=name,
            anatomies=list(d["anatomies"]),
            replaces=replaces,
            config=DecoderConfig.from_dict(d["architecture"]),
            file=d.get("file", ""),
            sha256=d.get("sha256", ""),
            bodypart_range=(float(rng[0]), float(rng[1])) if rng else None,
            info=dict(d.get("info", {})),
            anatomy_bodypart_ranges={str(a): (float(r[0]), float(r[1]))
                                     for a, r in (d.get("anatomy_bodypart_ranges") or {}).items()},
        )


@dataclass
class BodyPartEntry:
    """The model's own body-part network (optional): a weight file, its kind and its settings.

    ``kind`` says which scorer reads the file: ``bpreg-vgg16`` (the official release's network, imported
    by ``clnet import-official``) or ``clnet-bodypart`` (a file made by ``clnet bodypart train``).
    """

    kind: str
    file: str
    sha256: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "file": self.file, "sha256": self.sha256, "settings": self.settings,
                "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> BodyPartEntry:
        return cls(kind=str(d["kind"]), file=str(d["file"]), sha256=str(d.get("sha256", "")),
                   settings=dict(d.get("settings") or {}), info=dict(d.get("info") or {}))


@dataclass
class Manifest:
    name: str
    encoder: EncoderConfig
    preprocessing: Preprocessing
    decoders: dict[str, DecoderEntry]
    description: str = ""
    version: str = "0"
    demo: bool = True
    clinical_use: bool = False
    variant: str = "clnet-v1"
    encoder_file: str = "encoder.safetensors"
    encoder_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    bodypart: BodyPartEntry | None = None  # the model's own body-part network; None: clnet's bundled one
    #: The model's default for official-compatible inference (the Segmenter can override it).
    compat: OfficialCompat = field(default_factory=OfficialCompat)
    #: Anatomies beyond the catalog that this model's decoders output (see :mod:`clnet.catalog.user`).
    user_anatomies: list[dict[str, Any]] = field(default_factory=list)
    #: Lineage of a version made by ``clnet add-decoder``: the model it came from
    #: (``{"name", "version", "manifest_sha256"}``); None for a model trained or imported from scratch.
    base_model: dict[str, Any] | None = None
    created: str = ""  # UTC time the folder was made (ISO 8601), when known

    def decoder_preprocessing(self, decoder: str) -> Preprocessing:
        """The decoder's own preprocessing (imported official heads may differ) or the model's."""
        own = self.decoders[decoder].info.get("preprocessing")
        prep = Preprocessing.from_dict(own) if own else self.preprocessing
        official_pad = self.extra.get("official", {}).get("pad_value")
        if prep.pad_value is None and official_pad is not None:
            prep = replace(prep, pad_value=float(official_pad))
        return prep

    def anatomy_owner(self) -> dict[str, str]:
        """Catalog name → the decoder that outputs it.

        For an anatomy that several decoders output, a decoder that ``replaces`` it wins (the last one
        listed, i.e. the newest correction); without a replacement the first one listed wins.
        """
        owner: dict[str, str] = {}
        for dec in self.decoders.values():
            for a in dec.anatomies:
                if a in dec.replaces:
                    owner[a] = dec.name
                else:
                    owner.setdefault(a, dec.name)
        return owner

    def ignored_channels(self, decoder: str) -> set[str]:
        """The anatomies of ``decoder`` whose output channel inference ignores, because a correction
        (a decoder that ``replaces`` them) owns them now. Its other channels are used as they are."""
        owner = self.anatomy_owner()
        return {a for a in self.decoders[decoder].anatomies
                if owner[a] != decoder and a in self.decoders[owner[a]].replaces}

    def format_version(self) -> int:
        """1, or 2 for a model with user anatomies or corrections (see ``FORMAT_VERSION``)."""
        return 2 if self.user_anatomies or any(d.replaces for d in self.decoders.values()) else 1

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version(),
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "demo": self.demo,
            "clinical_use": self.clinical_use,
            "variant": self.variant,
            "encoder": {"architecture": self.encoder.to_dict(), "file": self.encoder_file, "sha256": self.encoder_sha256},
            "preprocessing": self.preprocessing.to_dict(),
            "decoders": {n: d.to_dict() for n, d in self.decoders.items()},
            "provenance": self.provenance,
            "metrics": self.metrics,
            **({"extra": self.extra} if self.extra else {}),
            **({"user_anatomies": self.user_anatomies} if self.user_anatomies else {}),
            **({"base_model": self.base_model} if self.base_model else {}),
            **({"created": self.created} if self.created else {}),
            **({"bodypart": self.bodypart.to_dict()} if self.bodypart else {}),
            **({"inference": {"official_compat": self.compat.to_dict()}} if self.compat.enabled else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        if d.get("format") != FORMAT_NAME:
            raise ModelError(
                f"manifest.json is not a CLNet model manifest (format={d.get('format')!r}).",
                "Point --model to a folder made by `clnet train`, `clnet import-official` or shipped with clnet.",
            )
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ModelError(
                f"This model uses manifest format {d.get('format_version')}, newer than this clnet ({FORMAT_VERSION}).",
                "Upgrade clnet-segmentation.",
            )
        try:
            enc = d["encoder"]
            return cls(
                name=d["name"],
                encoder=EncoderConfig.from_dict(enc["architecture"]),
                preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                decoders={n: DecoderEntry.from_dict(n, v) for n, v in d["decoders"].items()},
                description=d.get("description", ""),
                version=str(d.get("version", "0")),
                demo=bool(d.get("demo", True)),
                clinical_use=bool(d.get("clinical_use", False)),
                variant=d.get("variant", "clnet-v1"),
                encoder_file=enc.get("file", "encoder.safetensors"),
                encoder_sha256=enc.get("sha256", ""),
                provenance=dict(d.get("provenance", {})),
                metrics=dict(d.get("metrics", {})),
                extra=dict(d.get("extra", {})),
                bodypart=BodyPartEntry.from_dict(d["bodypart"]) if d.get("bodypart") else None,
                compat=OfficialCompat.from_dict((d.get("inference") or {}).get("official_compat") or {}),
                user_anatomies=[dict(u) for u in d.get("user_anatomies") or []],
                base_model=dict(d["base_model"]) if d.get("base_model") else None,
                created=str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"manifest.json is incomplete or malformed ({exc!r}).", "Re-create or re-install the model.") from exc


def read_manifest(directory: str | Path) -> Manifest:
    """Read and check a model folder's manifest.json (no weights are read; no torch needed)."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ModelError(f"Model folder {directory} does not exist.", "Check the --model path or run `clnet models list`.")
    if not path.is_file():
        raise ModelError(f"{directory} has no {MANIFEST_NAME}; it is not a CLNet model folder.",
                         "Point --model to a folder that holds manifest.json and *.safetensors files.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}).", "Re-install the model.") from exc
    return Manifest.from_dict(data)
