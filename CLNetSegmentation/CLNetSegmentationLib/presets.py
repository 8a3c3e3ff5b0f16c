"""Named anatomy selections offered in the module panel (catalog names)."""

from __future__ import annotations

_VERTEBRAE = (
    [f"Bone_Vert_C{i}" for i in range(1, 8)]
    + [f"Bone_Vert_T{i}" for i in range(1, 13)]
    + [f"Bone_Vert_L{i}" for i in range(1, 6)]
    + ["Bone_Vert_S1"]
)
_RIBS = [f"Bone_Rib{i}_{side}" for side in ("L", "R") for i in range(1, 13)]

PRESETS: dict[str, tuple[str, ...]] = {
    "Abdominal organs": (
        "Liver", "Spleen", "Kidney_R", "Kidney_L", "GallBladder", "Stomach", "Pancreas",
        "Glnd_Adrenal_R", "Glnd_Adrenal_L", "Duodenum", "SmallBowel", "Colon", "Sigmoid", "Rectum",
        "UrinaryBladder", "Prostate", "Uterus",
    ),
    "Spine": (*_VERTEBRAE, "Bone_Sacrum", "SpinalCord"),
    "Ribs": (*_RIBS, "Bone_Sternum", "Bone_CostalCartilages"),
    "Head & neck OARs": (
        "Brain", "BrainStem", "SpinalCord", "Chiasm", "OpticNerve_L", "OpticNerve_R", "Eye_L", "Eye_R",
        "Lens_L", "Lens_R", "Glnd_Lacrimal_L", "Glnd_Lacrimal_R", "Ear_Cochlea_L", "Ear_Cochlea_R",
        "Glnd_Pituitary", "TemporalLobe_L", "TemporalLobe_R", "Hippocampus_L", "Hippocampus_R",
        "Glnd_Parotid_L", "Glnd_Parotid_R", "Glnd_Submand_L", "Glnd_Submand_R",
        "Bone_Mandible_L", "Bone_Mandible_R", "TMJ_L", "TMJ_R", "OralCavity", "Larynx",
        "Musc_Const_S", "Musc_Const_M", "Musc_Const_I", "Eso", "Glnd_Thyroid_L", "Glnd_Thyroid_R",
        "BrachialPlexus_L", "BrachialPlexus_R",
    ),
    "Thoracic OARs": (
        "Heart", "Lung_L", "Lung_R", "Trachea", "Bronchus_L", "Bronchus_R", "Eso", "SpinalCord",
        "A_Aorta_Ascending", "A_Aorta_Arch", "A_Aorta_Descending", "A_Pulmonary",
        "V_VenaCava_S", "BrachialPlexus_L", "BrachialPlexus_R", "Bone_Sternum",
    ),
    "Heart chambers": ("Atrium_L", "Atrium_R", "Ventricle_L", "Ventricle_R", "Myocardium", "LAA"),
    "Lung lobes": ("Lung_LUL", "Lung_LLL", "Lung_RUL", "Lung_RML", "Lung_RLL"),
}  # fmt: skip
