"""A bootable Debian bookworm disk image: the real Linux server the KVM tests migrate.

Built the way DESIGN.md says, because these machines are containers: ``debootstrap`` a minimal root
(kernel, initramfs, sshd, ifupdown, python3), configure it as the server ``src01``, then make the disk
without a partition scan: an MBR written by hand, ``mke2fs -d ROOT`` straight into the partition's byte
range, and extlinux installed through a loop device mapped at the partition's offset (``losetup -o``),
with syslinux's ``mbr.bin`` in the first 440 bytes. The result boots by itself from its own disk.

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
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.quickstart import MbrPartition, write_mbr

MiB = 1024**2

CACHE_ENV = "HVMIGRATE_TESTBED_CACHE"
MIRROR_ENV = "HVMIGRATE_TESTBED_MIRROR"
DEFAULT_CACHE = Path("/var/cache/hvmigrate-testbed")

SUITE = "bookworm"
# python3-minimal alone lacks json, dataclasses, ctypes, mmap, queue, shutil and concurrent.futures, all of
# which the agent imports: python3 (the standard library, about 20 MB more) is the smallest that runs it.
PACKAGES = (
    "openssh-server",
    "ifupdown",
    "iproute2",
    "systemd-sysv",
    "udev",
    "python3-minimal",
    "python3",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "extlinux",
)

HOSTNAME = "src01"
MAC = "52:54:00:13:21:10"
INTERFACE = "eth0"
ADDRESS = "192.168.213.10"
PREFIX = 24
GATEWAY = "192.168.213.1"  # the host's side of the test network

IMAGE_SIZE = 1536 * MiB
PART_START = 1 * MiB
ROOT_LABEL = "root"
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
MBR_CODE_SIZE = 440  # the boot code area, before the disk signature and the partition table

DEBOOTSTRAP_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 600.0

# mke2fs's defaults differ between e2fsprogs releases; pinned so that the recipe, not the host, decides.
MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""

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
    "/boot/extlinux/extlinux.conf": (
        "SERIAL 0 115200\n"
        "DEFAULT debian\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL debian\n"
        "\tLINUX /boot/{kernel}\n"
        "\tINITRD /boot/{initrd}\n"
        "\tAPPEND root=UUID={root_uuid} ro console=tty0 console=ttyS0,115200n8\n"
    ),
}
RECIPE_VERSION = 1  # bump when the build steps change in a way the data above does not show


class ImageBuildError(RuntimeError):
    """The guest image could not be built; the message says what to install or look at."""


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
    encoded = json.dumps(recipe() if data is None else data, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()


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
    cache.mkdir(parents=True, exist_ok=True)
    with _cache_lock(cache, log):
        if (found := cached_image(cache)) is not None:  # another process built it while we waited
            return found
        return build_image(cache, log=log)


def missing_tools() -> list[str]:
    """What is missing to build the image here, as Debian package hints (empty: everything is there)."""
    tools = {
        "debootstrap": "debootstrap",
        "extlinux": "extlinux",
        "mke2fs": "e2fsprogs",
        "e2fsck": "e2fsprogs",
        "losetup": "mount",
        "mount": "mount",
        "ssh-keygen": "openssh-client",
    }
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [
        f"{tool} (Debian package {pkg}) is missing"
        for tool, pkg in tools.items()
        if not shutil.which(tool, path=path)
    ]
    if not SYSLINUX_MBR.is_file():
        missing.append(f"{SYSLINUX_MBR} (Debian package syslinux-common) is missing")
    if os.geteuid() != 0:
        missing.append("building the image needs root (debootstrap, chroot, loop devices)")
    return missing


@contextlib.contextmanager
def _cache_lock(cache: Path, log: Callable[[str], None]) -> Iterator[None]:
    """One build at a time per cache: a second test run waits for the first one's image."""
    with open(cache / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is building the guest image in {cache}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- where packages come from


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt uses on this machine for ``suite`` (HVMIGRATE_TESTBED_MIRROR overrides)."""
    if override := os.environ.get(MIRROR_ENV):
        return override
    for uri, suites in _apt_sources():
        if suite in suites:
            return uri
    return "http://deb.debian.org/debian"


def _apt_sources(root: Path = Path("/etc/apt")) -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of every enabled 'deb' source, one-line and deb822 formats alike."""
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()  # options: [arch=...]
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], [words[2]]
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ", "\t")):
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split()


# ---------------------------------------------------------------- the build


def build_image(cache: Path, *, log: Callable[[str], None] = print) -> GuestImage:
    """Build the image into a scratch directory of ``cache`` and rename it into place when complete.

    The caller holds the cache lock.
    """
    digest = recipe_hash()
    final = cache / entry_name(digest)
    remove_stale_builds(cache)
    work = Path(tempfile.mkdtemp(prefix=f".build-{digest[:16]}-", dir=cache))
    started = time.monotonic()
    try:
        root = work / "root"
        out = work / "out"
        out.mkdir()
        mirror = apt_mirror()
        log(f"debootstrap {SUITE} from {mirror} (a few minutes)")
        debootstrap_seconds = _debootstrap(root, mirror, cache / "debootstrap.log")
        root_uuid = str(uuid.uuid4())
        kernel, initrd = _kernel_files(root)
        log("configuring the root: hostname, network, sshd keys, boot loader config, initramfs")
        _configure_root(root, out, root_uuid=root_uuid, kernel=kernel, initrd=initrd)
        log(f"making the disk: MBR, ext4 from the root tree, extlinux ({IMAGE_SIZE // MiB} MiB, sparse)")
        disk = out / "disk.raw"
        _make_disk(disk, root, root_uuid, seed=digest, work=work)
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
            "debootstrap_seconds": round(debootstrap_seconds, 1),
            "build_seconds": round(time.monotonic() - started, 1),
            "apparent_bytes": stat.st_size,
            "allocated_bytes": stat.st_blocks * 512,
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(out, final)  # the cache entry appears complete, or not at all
        log(f"guest image ready: {final / 'disk.raw'}")
    finally:
        _remove_build_dir(work)
    return load_image(final)


def remove_stale_builds(cache: Path) -> list[Path]:
    """Remove what killed builds left in ``cache``, mounts and loop devices first; hold the cache lock."""
    removed = []
    for stale in sorted(cache.glob(".build-*")):
        if stale.is_dir():
            _remove_build_dir(stale)
            removed.append(stale)
    return removed


def _remove_build_dir(work: Path) -> None:
    """Unmount and detach whatever still points into ``work``, then delete it without crossing filesystems.

    debootstrap mounts /proc and /sys in the root it builds; a killed one leaves them mounted, and a plain
    recursive delete would walk into them.
    """
    prefix = str(work.resolve()) + "/"
    mounts = [
        line.split()[1].encode().decode("unicode_escape")
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(prefix)
    ]
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    for image in work.rglob("*.raw"):
        _detach_loops(image)
    subprocess.run(["rm", "-rf", "--one-file-system", str(work)], capture_output=True, check=False)


def _detach_loops(image: Path) -> None:
    found = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False)
    for line in found.stdout.splitlines():
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True, check=False)


def _run(argv: list[str], what: str, *, timeout: float = COMMAND_TIMEOUT, **kwargs: Any) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{what} did not finish within {timeout:.0f} s: {' '.join(argv)}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")
    return result.stdout


def _debootstrap(root: Path, mirror: str, log_path: Path) -> float:
    started = time.monotonic()
    argv = [
        "debootstrap",
        "--variant=minbase",
        "--include=" + ",".join(PACKAGES),
        SUITE,
        str(root),
        mirror,
    ]
    with open(log_path, "w") as log:
        try:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ImageBuildError(f"debootstrap did not finish within {DEBOOTSTRAP_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        inner = root / "debootstrap" / "debootstrap.log"  # its own detailed log, gone with the build dir
        if inner.exists():
            with open(log_path, "a") as log:
                log.write("\n--- debootstrap/debootstrap.log ---\n" + inner.read_text(errors="replace"))
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        raise ImageBuildError(
            f"debootstrap {SUITE} from {mirror} failed ({tail}); see {log_path}, check that this machine "
            f"reaches the mirror or set {MIRROR_ENV}"
        )
    return time.monotonic() - started


def _kernel_files(root: Path) -> tuple[str, str]:
    kernels = sorted(p.name for p in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageBuildError(
            "debootstrap installed no kernel in /boot: is linux-image-cloud-amd64 available?"
        )
    kernel = kernels[-1]
    initrd = "initrd.img-" + kernel.removeprefix("vmlinuz-")
    return kernel, initrd


def _configure_root(root: Path, out: Path, *, root_uuid: str, kernel: str, initrd: str) -> None:
    values = {"root_uuid": root_uuid, "kernel": kernel, "initrd": initrd}
    for guest_path, template in ROOT_FILES.items():
        target = root / guest_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(template.format(**values) if "{" in template else template)
        target.chmod(0o644)

    # sshd: one host key type, generated for this image, so a test can pin exactly what it will be offered.
    for old in (root / "etc/ssh").glob("ssh_host_*_key*"):
        old.unlink()
    host_key = root / "etc/ssh/ssh_host_ed25519_key"
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{HOSTNAME}", "-f", str(host_key)],
        "ssh-keygen",
    )
    public = host_key.with_suffix(".pub").read_text()
    (out / "ssh_host_ed25519_key.pub").write_text(public)
    (out / "fingerprint").write_text(fingerprint_of(public) + "\n")

    # root logs in with a key the test bed made, and with nothing else.
    client_key = out / "id_ed25519"
    _run(
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
    _run(
        ["chroot", str(root), "update-initramfs", "-u", "-k", kernel.removeprefix("vmlinuz-")],
        "update-initramfs",
    )

    # what debootstrap downloaded is not part of a server; apt can fetch the lists again.
    for leftover in [
        *(root / "var/cache/apt/archives").glob("*.deb"),
        *(root / "var/lib/apt/lists").glob("*_*"),
    ]:
        leftover.unlink()


def fingerprint_of(public_line: str) -> str:
    """SHA256:... of an OpenSSH public key line, as ``ssh-keygen -lf`` shows it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _make_disk(disk: Path, root: Path, root_uuid: str, *, seed: str, work: Path) -> None:
    part_size = IMAGE_SIZE - PART_START
    with open(disk, "wb") as handle:
        handle.truncate(IMAGE_SIZE)
    write_mbr(disk, [MbrPartition(PART_START, part_size, 0x83, bootable=True)], int(seed[:8], 16))

    conf = work / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    env = {**os.environ, "MKE2FS_CONFIG": str(conf)}
    _run(
        [
            "mke2fs", "-q", "-F", "-t", "ext4", "-U", root_uuid, "-L", ROOT_LABEL,
            "-E", f"offset={PART_START},nodiscard", "-d", str(root), str(disk), f"{part_size // 1024}k",
        ],
        "mke2fs -d",
        env=env,
    )  # fmt: skip

    loop = _run(
        ["losetup", "--find", "--show", "-o", str(PART_START), "--sizelimit", str(part_size), str(disk)],
        "losetup",
    ).strip()
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    try:
        _run(["e2fsck", "-f", "-n", loop], "e2fsck of the new root filesystem")
        _run(["mount", "-t", "ext4", loop, str(mountpoint)], "mount of the new root filesystem")
        try:
            _run(["extlinux", "--install", str(mountpoint / "boot/extlinux")], "extlinux --install")
        finally:
            _run(["umount", str(mountpoint)], "umount")
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)

    code = SYSLINUX_MBR.read_bytes()[:MBR_CODE_SIZE]
    with open(disk, "r+b") as handle:
        handle.write(code)  # boot code only: the signature and partition table behind it stay


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
