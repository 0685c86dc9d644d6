"""Errors of the data mover.

Every message names the disk offset or file involved and says what to do next, because the operator sees
it in a step failure hours into a wave and must act on it without reading code.
"""

from __future__ import annotations


class MirrorError(Exception):
    """A pass stopped; what was durably copied before it stays recorded, so the next run resumes.

    ``retryable`` tells the step runner whether trying again without a human may help (a read error on
    a source disk may be transient; a full target is not until someone frees space).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class MirrorCancelled(MirrorError):
    """The caller asked to stop; raised at a chunk boundary after the block map was flushed."""


class BlockMapMismatch(MirrorError):
    """The block map beside the target describes a different geometry than this run asks for."""
