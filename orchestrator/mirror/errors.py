"""Errors of the data mover.

Every message names the disk offset or file involved and says what to do next, because the operator sees
it in a step failure hours into a wave and must act on it without reading code.
"""

from __future__ import annotations


class MirrorError(Exception):
    """A pass stopped; what was durably copied before it stays recorded, so the next run resumes."""


class MirrorCancelled(MirrorError):
    """The caller asked to stop; raised at a chunk boundary after the block map was flushed."""


class BlockMapMismatch(MirrorError):
    """The block map beside the target describes a different geometry than this run asks for."""
