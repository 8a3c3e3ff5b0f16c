"""Volume node ↔ SimpleITK: the engine's input, built from a volume node with a single copy.

Slicer stores geometry as an IJK→RAS matrix; ITK (and so the engine) uses LPS. The two differ by
a sign flip of the first two world axes, which is all the conversion below does.
"""

from __future__ import annotations

import hashlib

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonMath import vtkMatrix4x4

# RAS → LPS: negate x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def ijkToRasArray(volumeNode) -> np.ndarray:
    """The node's IJK→RAS matrix as a 4x4 numpy array."""
    matrix = vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def lpsGeometry(ijkToRas: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, direction) in ITK's LPS convention from an IJK→RAS matrix."""
    linear = ijkToRas[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = _RAS_TO_LPS @ (linear / spacing)
    origin = _RAS_TO_LPS @ ijkToRas[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def voxelView(volumeNode) -> np.ndarray:
    """The node's voxels as a (k, j, i) numpy view (no copy) of its vtkImageData scalars."""
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has no image data.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"Volume '{volumeNode.GetName()}' is not a scalar (single-component) volume.")
    dims = imageData.GetDimensions()
    flat = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
    return flat.reshape(dims[2], dims[1], dims[0])


def volumeToSitk(volumeNode):
    """A SimpleITK image with the node's voxels (copied once) and its geometry in LPS.

    The volume's own parent transform is deliberately ignored: the segmentation is placed under
    the same transform, so both live in the volume's local frame.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(voxelView(volumeNode))
    origin, spacing, direction = lpsGeometry(ijkToRasArray(volumeNode))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def writeVolume(volumeNode, path) -> None:
    """Write the node's voxels and geometry (LPS, parent transform ignored as in
    :func:`volumeToSitk`) to ``path``, uncompressed: the worker process reads it."""
    import SimpleITK as sitk

    sitk.WriteImage(volumeToSitk(volumeNode), str(path), useCompression=False)


def volumeFingerprint(volumeNode) -> str:
    """sha256 of the voxels, scalar type and IJK→RAS matrix (to prove a volume was not modified)."""
    h = hashlib.sha256()
    voxels = voxelView(volumeNode)
    h.update(str((voxels.dtype.str, voxels.shape)).encode())
    h.update(np.ascontiguousarray(voxels).tobytes())
    h.update(ijkToRasArray(volumeNode).tobytes())
    return h.hexdigest()


def _looksLikeCt(volumeNode) -> bool:
    """Air at about -1000 HU is the cheapest sign of a CT in Hounsfield units."""
    imageData = volumeNode.GetImageData()
    return imageData is not None and imageData.GetScalarRange()[0] <= -500


def findFirstCt(scene):
    """The first scalar (non-labelmap) volume that looks like a CT, else the first one, else None."""
    volumes = [
        scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
    ]
    volumes = [v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")]
    for volume in volumes:
        if _looksLikeCt(volume):
            return volume
    return volumes[0] if volumes else None
