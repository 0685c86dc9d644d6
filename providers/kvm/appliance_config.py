"""Runs inside the recovery appliance at every boot, before sshd: its identity from the config disk.

The appliance image is the same for every appliance and holds no key at all. The provider mints, per
appliance, an SSH host key (whose public half it pins, so host-key checking stays on) and a client key
allowed to log in as root, and hands them over on a small read-only disk holding a tar archive
(appliance.py writes it). This program installs what that archive holds, every boot, so that a provider
that re-keys an appliance only has to replace the archive and restart it.

Standard library only (the image's Python 3). Missing pieces fail the unit, and sshd, which requires it,
does not start: an appliance without the provider's keys must not be reachable with any other.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

DEVICE = "/dev/disk/by-id/virtio-hvmigrate-config"  # appliance_layout.CONFIG_DEVICE (stdlib only here)
MEMBERS = ("authorized_keys", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "hostname")
MAX_MEMBER = 64 * 1024


def read_archive(device: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with tarfile.open(device, mode="r:") as archive:  # stops at the archive's end; zeros follow it
        for member in archive.getmembers():
            if member.name in MEMBERS and member.isfile() and member.size <= MAX_MEMBER:
                handle = archive.extractfile(member)
                if handle is not None:
                    found[member.name] = handle.read()
    missing = [name for name in MEMBERS if name not in found]
    if missing:
        raise SystemExit(f"hvmigrate-appliance-config: {device} lacks {', '.join(missing)}")
    return found


def install(path: Path, data: bytes, mode: int) -> None:
    """Written beside and renamed over: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    files = read_archive(argv[1] if len(argv) > 1 else DEVICE)
    install(Path("/etc/ssh/ssh_host_ed25519_key"), files["ssh_host_ed25519_key"], 0o600)
    install(Path("/etc/ssh/ssh_host_ed25519_key.pub"), files["ssh_host_ed25519_key.pub"], 0o644)
    ssh_dir = Path("/root/.ssh")
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    install(ssh_dir / "authorized_keys", files["authorized_keys"], 0o600)
    hostname = files["hostname"].decode("ascii", "replace").strip()[:63] or "hvm-appliance"
    install(Path("/etc/hostname"), (hostname + "\n").encode(), 0o644)
    hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    install(Path("/etc/hosts"), hosts.encode(), 0o644)
    Path("/proc/sys/kernel/hostname").write_text(hostname)
    print(f"hvmigrate-appliance-config: keys and host name {hostname} installed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
