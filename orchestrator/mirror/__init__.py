"""The data mover: block maps, hashing, zero skip, throttle, verify (DESIGN.md, "The data plane").

``mirror_disk`` runs one pass of one disk; the caller runs several disks at once on threads.
"""

from .blockmap import BlockMap, MapSnapshot, map_path_for
from .copier import MODES, Mode, PassStats, mirror_disk
from .errors import BlockMapMismatch, MirrorCancelled, MirrorError
from .file_reader import FileDiskReader
from .throttle import Throttle, limit_at, next_change
from .writer import TargetWriter

__all__ = [
    "MODES",
    "BlockMap",
    "BlockMapMismatch",
    "FileDiskReader",
    "MapSnapshot",
    "MirrorCancelled",
    "MirrorError",
    "Mode",
    "PassStats",
    "TargetWriter",
    "Throttle",
    "limit_at",
    "map_path_for",
    "mirror_disk",
    "next_change",
]
