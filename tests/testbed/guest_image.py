"""A bootable Debian bookworm disk image: the real Linux server the KVM tests migrate.

Built from Debian packages by providers/kvm/debian_image.py (the recovery appliance's image is made the
same way, from the same cached debootstrap): a minimal root (kernel, initramfs, sshd, ifupdown, python3),
configured here as the server ``src01``, on a disk that boots by itself from its own MBR and extlinux.

Building takes minutes on two shared cores, so images are cached, keyed by a hash of the recipe (every
input that shapes the image: packages, configuration files, sizes): change the recipe and the next run
rebuilds; leave it alone and every run reuses the same image. A build happens in a ``.build-*`` directory
inside the cache and is renamed into place when complete, so a killed build never leaves a half image that
a later run would trust; the next build removes such leftovers (unmounting what a killed debootstrap left
mounted first).

Each cache entry holds the disk, the client key that may log in as root, the sshd host key's public half
and fingerprint (tests pin it: nothing here trusts on first use) and ``manifest.json`` with the recipe and
build timings. ``python -m tests.testbed.guest_image build`` does the same by hand.

The network identity is fixed by the recipe: the first NIC, matched by its MAC, is named ``eth0`` by a
systemd ``.link`` file (in the initramfs too) and gets ``ADDRESS`` from /etc/network/interfaces. A VM given
another MAC comes up with ``enp0s2`` and no address: the interface-rename problem that migration staging
has to solve, left in on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from providers.kvm import debian_image
from providers.kvm.debian_image import (
    MBR_CODE_SIZE,
    MIRROR_ENV,
    MKE2FS_CONF,
    PART_START,
    SUITE,
    SYSLINUX_MBR,
    ImageBuildError,
    apt_mirror,
    fingerprint_of,
    remove_stale_builds,
)

__all__ = [
    "MBR_CODE_SIZE",
    "MIRROR_ENV",
    "MKE2FS_CONF",
    "PART_START",
    "SUITE",
    "SYSLINUX_MBR",
    "GuestImage",
    "ImageBuildError",
    "apt_mirror",
    "cached_image",
    "ensure_image",
    "fingerprint_of",
    "missing_tools",
    "recipe",
    "recipe_hash",
    "remove_stale_builds",
]

MiB = 1024**2

CACHE_ENV = "HVMIGRATE_TESTBED_CACHE"
DEFAULT_CACHE = Path("/var/cache/hvmigrate-testbed")

PACKAGES = debian_image.PACKAGES  # the shared set: one debootstrap serves this image and the appliance's

HOSTNAME = "src01"
MAC = "52:54:00:13:21:10"
INTERFACE = "eth0"
ADDRESS = "192.168.213.10"
PREFIX = 24
GATEWAY = "192.168.213.1"  # the host's side of the test network

IMAGE_SIZE = 1536 * MiB
ROOT_LABEL = "root"

# Files written into the root after debootstrap; {placeholders} are filled at build time.
ROOT_FILES: dict[str, str] = {
    "/etc/hostname": f"{HOSTNAME}\n",
    "/etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "/etc/fstab": "UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n",
    "/etc/resolv.conf": f"nameserver {GATEWAY}\n",
    "/etc/network/interfaces": (
        "source /etc/network/interfaces.d/*\n\n"
        "auto lo\niface lo inet loopback\n\n"
        f"allow-hotplug {INTERFACE}\n"
        f"iface {INTERFACE} inet static\n"
        f"\taddress {ADDRESS}/{PREFIX}\n"
        f"\tgateway {GATEWAY}\n"
    ),
    f"/etc/systemd/network/10-{INTERFACE}.link": (
        f"# The NIC with this MAC is {INTERFACE}, whatever its PCI slot.\n"
        f"[Match]\nMACAddress={MAC}\n\n[Link]\nName={INTERFACE}\n"
    ),
    "/etc/ssh/sshd_config.d/10-testbed.conf": (
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n"
    ),
    "/boot/extlinux/extlinux.conf": debian_image.EXTLINUX_CONF,
}
RECIPE_VERSION = 1  # bump when the build steps change in a way the data above does not show


@dataclass(frozen=True)
class GuestImage:
    """A built image in the cache, and what a test needs to log in to it and trust it."""

    directory: Path
    disk: Path  # raw, sparse, read-only: boot it through an overlay
    client_key: Path  # private ed25519 key authorized for root
    host_public_key: str  # "ssh-ed25519 AAAA..." of the guest's sshd
    fingerprint: str  # SHA256:... of that key, as ssh-keygen -lf prints it
    manifest: dict[str, Any]

    hostname: str = HOSTNAME
    address: str = ADDRESS
    prefix: int = PREFIX
    gateway: str = GATEWAY
    mac: str = MAC

    @property
    def root_uuid(self) -> str:
        return str(self.manifest["root_uuid"])

    def known_hosts_line(self, host: str = ADDRESS, port: int = 22) -> str:
        name = host if port == 22 else f"[{host}]:{port}"
        return f"{name} {self.host_public_key}"


# ---------------------------------------------------------------- the recipe and the cache


def recipe() -> dict[str, Any]:
    """Every input that shapes the image; its hash names the cache entry."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": "minbase",
        "packages": list(PACKAGES),
        "image_size": IMAGE_SIZE,
        "part_start": PART_START,
        "root_label": ROOT_LABEL,
        "mke2fs_conf": MKE2FS_CONF,
        "files": dict(sorted(ROOT_FILES.items())),
    }


def recipe_hash(data: dict[str, Any] | None = None) -> str:
    return debian_image.recipe_hash(recipe() if data is None else data)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def entry_name(digest: str) -> str:
    return f"{SUITE}-{digest[:16]}"


def load_image(directory: Path) -> GuestImage:
    manifest = json.loads((directory / "manifest.json").read_text())
    public = (directory / "ssh_host_ed25519_key.pub").read_text().split()
    return GuestImage(
        directory=directory,
        disk=directory / "disk.raw",
        client_key=directory / "id_ed25519",
        host_public_key=" ".join(public[:2]),
        fingerprint=(directory / "fingerprint").read_text().strip(),
        manifest=manifest,
    )


def cached_image(cache: Path | None = None) -> GuestImage | None:
    """The image for the current recipe if a complete one is in the cache."""
    directory = (cache or cache_dir()) / entry_name(recipe_hash())
    if not (directory / "manifest.json").is_file():
        return None
    return load_image(directory)


def ensure_image(cache: Path | None = None, *, log: Callable[[str], None] = print) -> GuestImage:
    """The image for the current recipe: from the cache, or built now (minutes) and cached."""
    cache = cache or cache_dir()
    if (found := cached_image(cache)) is not None:
        return found
    if problems := missing_tools():
        raise ImageBuildError("cannot build the guest image: " + "; ".join(problems))
    with debian_image.cache_lock(cache, log, "the guest image"):
        if (found := cached_image(cache)) is not None:  # another process built it while we waited
            return found
        return build_image(cache, log=log)


def missing_tools() -> list[str]:
    """What is missing to build the image here, as Debian package hints (empty: everything is there)."""
    return debian_image.missing_tools({"ssh-keygen": "openssh-client"})


# ---------------------------------------------------------------- the build


def build_image(cache: Path, *, log: Callable[[str], None] = print) -> GuestImage:
    """Build the image into a scratch directory of ``cache`` and rename it into place when complete.

    The caller holds the cache lock.
    """
    digest = recipe_hash()
    final = cache / entry_name(digest)
    started = time.monotonic()
    with debian_image.build_dir(cache, digest) as work:
        root = work / "root"
        out = work / "out"
        out.mkdir()
        mirror = apt_mirror()
        debootstrap_seconds = debian_image.prepared_root(cache, root, packages=PACKAGES, log=log)
        root_uuid = str(uuid.uuid4())
        kernel, initrd = debian_image.kernel_files(root)
        log("configuring the root: hostname, network, sshd keys, boot loader config, initramfs")
        _configure_root(root, out, root_uuid=root_uuid, kernel=kernel, initrd=initrd)
        log(f"making the disk: MBR, ext4 from the root tree, extlinux ({IMAGE_SIZE // MiB} MiB, sparse)")
        disk = out / "disk.raw"
        debian_image.make_disk(
            disk, root, root_uuid, image_size=IMAGE_SIZE, label=ROOT_LABEL, seed=digest, work=work
        )
        disk.chmod(0o444)  # the cached image is only ever a backing file
        stat = disk.stat()
        manifest = {
            "recipe_hash": digest,
            "recipe": recipe(),
            "mirror": mirror,
            "root_uuid": root_uuid,
            "kernel": kernel,
            "initrd": initrd,
            "interface": INTERFACE,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "debootstrap_seconds": round(debootstrap_seconds, 1),  # 0: the cached debootstrap served
            "build_seconds": round(time.monotonic() - started, 1),
            "apparent_bytes": stat.st_size,
            "allocated_bytes": stat.st_blocks * 512,
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(out, final)  # the cache entry appears complete, or not at all
        log(f"guest image ready: {final / 'disk.raw'}")
    return load_image(final)


def _configure_root(root: Path, out: Path, *, root_uuid: str, kernel: str, initrd: str) -> None:
    debian_image.write_files(root, ROOT_FILES, {"root_uuid": root_uuid, "kernel": kernel, "initrd": initrd})

    # sshd: one host key type, generated for this image, so a test can pin exactly what it will be offered.
    for old in (root / "etc/ssh").glob("ssh_host_*_key*"):
        old.unlink()
    host_key = root / "etc/ssh/ssh_host_ed25519_key"
    debian_image.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{HOSTNAME}", "-f", str(host_key)],
        "ssh-keygen",
    )
    public = host_key.with_suffix(".pub").read_text()
    (out / "ssh_host_ed25519_key.pub").write_text(public)
    (out / "fingerprint").write_text(fingerprint_of(public) + "\n")

    # root logs in with a key the test bed made, and with nothing else.
    client_key = out / "id_ed25519"
    debian_image.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hvmigrate-testbed", "-f", str(client_key)],
        "ssh-keygen",
    )
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    ssh_dir.chmod(0o700)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)

    # the .link file must be in the initramfs too: its udev names the NIC before the root is mounted.
    debian_image.run(
        ["chroot", str(root), "update-initramfs", "-u", "-k", kernel.removeprefix("vmlinuz-")],
        "update-initramfs",
    )
    debian_image.clean_package_caches(root)


# ---------------------------------------------------------------- by hand


def describe(image: GuestImage) -> str:
    manifest = image.manifest
    stat = image.disk.stat()
    apparent, allocated = stat.st_size / MiB, stat.st_blocks * 512 / MiB
    return "\n".join(
        [
            f"image        {image.disk}",
            f"recipe       {manifest['recipe_hash'][:16]} ({SUITE}, kernel {manifest['kernel']})",
            f"size         {apparent:.0f} MiB apparent, {allocated:.0f} MiB allocated",
            f"built        {manifest['built_at']}: debootstrap {manifest['debootstrap_seconds']} s, "
            f"whole build {manifest['build_seconds']} s",
            f"guest        {image.hostname}, {image.address}/{image.prefix} on {INTERFACE} (MAC {image.mac})",
            f"login        ssh -i {image.client_key} root@{image.address}",
            f"host key     {image.fingerprint}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.testbed.guest_image",
        description=f"Build (or find in the cache) the test bed's bootable Debian guest image. Cache: "
        f"${CACHE_ENV} or {DEFAULT_CACHE}.",
    )
    parser.add_argument("command", choices=["build", "info", "path"], help="build: from the cache if there")
    parser.add_argument(
        "--cache", type=Path, help=f"cache directory (default: ${CACHE_ENV} or {DEFAULT_CACHE})"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            image = ensure_image(args.cache)
        else:
            found = cached_image(args.cache)
            if found is None:
                print(
                    "error: no image for this recipe in the cache: "
                    "run `python -m tests.testbed.guest_image build`",
                    file=sys.stderr,
                )
                return 1
            image = found
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(image.disk if args.command == "path" else describe(image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
