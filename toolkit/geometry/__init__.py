"""Rotation and rigid-frame geometry: SO(3), SE(3)^N frames and protein backbones.

The group maps share short names, so use them through their module: ``so3.exp``,
``so3.log``, ``so3.interpolate``, ``so3.angle`` and ``se3.interpolate``.
"""

from toolkit.geometry import se3, so3
from toolkit.geometry.se3 import (
    IDEAL_C,
    IDEAL_CA,
    IDEAL_N,
    Rigid,
    center,
    dihedral,
    frames_from_backbone,
    ideal_backbone,
    place_atom,
)
from toolkit.geometry.so3 import (
    geodesic_distance,
    hat,
    igso3_angle_density,
    igso3_density,
    igso3_sample,
    matrix_to_quat,
    quat_to_matrix,
    quat_to_rotvec,
    random_uniform,
    rotvec_to_quat,
    vee,
)

__all__ = [
    "IDEAL_C",
    "IDEAL_CA",
    "IDEAL_N",
    "Rigid",
    "center",
    "dihedral",
    "frames_from_backbone",
    "geodesic_distance",
    "hat",
    "ideal_backbone",
    "igso3_angle_density",
    "igso3_density",
    "igso3_sample",
    "matrix_to_quat",
    "place_atom",
    "quat_to_matrix",
    "quat_to_rotvec",
    "random_uniform",
    "rotvec_to_quat",
    "se3",
    "so3",
    "vee",
]
