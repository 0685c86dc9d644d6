"""The KVM provider: libvirt domains and storage volumes through libvirt-python (extra ``kvm``)."""

from .provider import KvmProvider

__all__ = ["KvmProvider"]
