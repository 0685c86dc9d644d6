"""Hyper-V over WinRM: see provider.py."""

from .provider import HypervProvider

__all__ = ["HypervProvider"]
