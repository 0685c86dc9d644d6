"""The embedded simulated hypervisor and the image source: the quickstart runs on these alone."""

from .image_source import ImageSource
from .provider import SimProvider

__all__ = ["ImageSource", "SimProvider"]
