"""The ESX provider: vCenter or a standalone ESXi through pyVmomi (extra ``esx``)."""

from .provider import EsxProvider

__all__ = ["EsxProvider"]
