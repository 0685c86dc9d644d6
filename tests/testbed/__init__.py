"""The test bed: real services (libvirtd with QEMU, ...) installed and started the way DESIGN.md says.

Each module is both a library for the tests (idempotent ``ensure_*`` functions, pytest helpers that skip
with the Debian package to install) and a command a person runs to get the same service by hand:
``python -m tests.testbed.libvirt``.
"""
