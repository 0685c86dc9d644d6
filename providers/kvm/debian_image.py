"""Bootable Debian disk images built from Debian packages, on a machine that cannot scan partitions.

Both the recovery appliance (appliance_image.py) and the test bed's source server (tests/testbed/
guest_image.py) are made this way, because the machines that build them are often containers:
``debootstrap`` a minimal root, configure it, then make the disk without a partition scan: an MBR written
by hand, ``mke2fs -d ROOT`` straight into the partition's byte range, and extlinux installed through a
loop device mapped at the partition's offset (``losetup -o``), with syslinux's ``mbr.bin`` in the first
440 bytes. The result boots by itself from its own disk.

debootstrap is the slow part (minutes, most of it downloading), so its result is cached too: one root per
(suite, package set), copied for each image that needs it. Images that install the same packages share
one debootstrap, whatever else they configure.

Everything here happens inside a cache directory: a build runs in a ``.build-*`` directory and is renamed
into place when complete, so a killed build never leaves a half image (or half root) that a later run
would trust; the next build removes such leftovers, unmounting what a killed debootstrap left mounted
first. Callers hold ``cache_lock`` while they build.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from orchestrator.quickstart import MKE2FS_CONF, MbrPartition, write_mbr

MiB = 1024**2

SUITE = "bookworm"
VARIANT = "minbase"
MIRROR_ENV = "HVMIGRATE_DEBIAN_MIRROR"
LEGACY_MIRROR_ENV = "HVMIGRATE_TESTBED_MIRROR"  # the test bed's older name for the same override

# What both images install, so that they share one debootstrap. python3-minimal alone lacks json,
# dataclasses, ctypes, mmap, queue, shutil and concurrent.futures, all of which the agent imports: python3
# (the standard library, about 20 MB more) is the smallest that runs it. systemd brings systemd-networkd.
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

PART_START = 1 * MiB
# Boots the one kernel by root UUID, with the console on the serial port too (what libvirt logs).
EXTLINUX_CONF = (
    "SERIAL 0 115200\n"
    "DEFAULT debian\n"
    "PROMPT 0\n"
    "TIMEOUT 0\n"
    "LABEL debian\n"
    "\tLINUX /boot/{kernel}\n"
    "\tINITRD /boot/{initrd}\n"
    "\tAPPEND root=UUID={root_uuid} ro console=tty0 console=ttyS0,115200n8\n"
)
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
MBR_CODE_SIZE = 440  # the boot code area, before the disk signature and the partition table

DEBOOTSTRAP_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 600.0

# tool -> the Debian package that has it
BUILD_TOOLS: dict[str, str] = {
    "debootstrap": "debootstrap",
    "extlinux": "extlinux",
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "losetup": "mount",
    "mount": "mount",
    "chroot": "coreutils",
}


class ImageBuildError(RuntimeError):
    """A Debian image could not be built; the message says what to install or look at."""


# ---------------------------------------------------------------- what a build needs


def missing_tools(extra: Mapping[str, str] | None = None) -> list[str]:
    """What is missing to build an image here, as Debian package hints (empty: everything is there)."""
    tools = {**BUILD_TOOLS, **(extra or {})}
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


def recipe_hash(recipe: Mapping[str, Any]) -> str:
    """The cache key of a recipe: every input that shapes what is built."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def cache_lock(cache: Path, log: Callable[[str], None], what: str = "an image") -> Iterator[None]:
    """One build at a time per cache: a second process waits for the first one's result.

    Not re-entrant: a caller that holds it calls the functions below, which never take it themselves.
    """
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is building {what} in {cache}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def build_dir(cache: Path, digest: str, *, outermost: bool = True) -> Iterator[Path]:
    """A scratch directory in ``cache`` for one build, removed (mounts and loop devices first) after it.

    The outermost build of a lock holder removes the leftovers of killed builds first (a build nested in
    another must not: the outer one's directory looks just like a leftover). The caller renames its
    result out of here when it is complete.
    """
    if outermost:
        remove_stale_builds(cache)
    work = Path(tempfile.mkdtemp(prefix=f".build-{digest[:16]}-", dir=cache))
    try:
        yield work
    finally:
        remove_build_dir(work)


def remove_stale_builds(cache: Path) -> list[Path]:
    """Remove what killed builds left in ``cache``, mounts and loop devices first; hold the cache lock."""
    removed = []
    for stale in sorted(cache.glob(".build-*")):
        if stale.is_dir():
            remove_build_dir(stale)
            removed.append(stale)
    return removed


def remove_build_dir(work: Path) -> None:
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


def run(argv: list[str], what: str, *, timeout: float = COMMAND_TIMEOUT, **kwargs: Any) -> str:
    """Run a build command; a failure is an ImageBuildError with the tail of what it printed."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{what} did not finish within {timeout:.0f} s: {' '.join(argv)}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")
    return result.stdout


# ---------------------------------------------------------------- where packages come from


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt uses on this machine for ``suite``; HVMIGRATE_DEBIAN_MIRROR overrides it."""
    for name in (MIRROR_ENV, LEGACY_MIRROR_ENV):
        if override := os.environ.get(name):
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


# ---------------------------------------------------------------- the debootstrapped root, shared


def root_recipe(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> dict[str, Any]:
    return {"suite": suite, "variant": VARIANT, "packages": sorted(packages)}


def root_entry(cache: Path, packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> Path:
    return cache / f"root-{suite}-{recipe_hash(root_recipe(packages, suite))[:16]}"


def prepared_root(
    cache: Path,
    dest: Path,
    *,
    packages: tuple[str, ...] = PACKAGES,
    suite: str = SUITE,
    log: Callable[[str], None] = print,
) -> float:
    """A private copy at ``dest`` of the debootstrapped root for ``packages``; returns the seconds spent in
    debootstrap (0.0 when the cached root served). The caller holds the cache lock and owns ``dest``."""
    entry = root_entry(cache, packages, suite)
    spent = 0.0
    if not (entry / "complete").is_file():
        spent = _debootstrap_into_cache(cache, entry, packages, suite, log)
    # a full copy, never hard links: the image's configuration must not reach into the shared root
    run(["cp", "-a", "--reflink=auto", str(entry / "root"), str(dest)], "copying the debootstrapped root")
    return spent


def _debootstrap_into_cache(
    cache: Path, entry: Path, packages: tuple[str, ...], suite: str, log: Callable[[str], None]
) -> float:
    digest = recipe_hash(root_recipe(packages, suite))
    mirror = apt_mirror(suite)
    with build_dir(cache, digest, outermost=False) as work:
        out = work / "out"
        out.mkdir()
        log(f"debootstrap {suite} from {mirror} (a few minutes; cached afterwards in {entry})")
        spent = debootstrap(out / "root", mirror, cache / "debootstrap.log", packages=packages, suite=suite)
        clean_package_caches(out / "root")
        (out / "complete").write_text(
            json.dumps({**root_recipe(packages, suite), "mirror": mirror, "seconds": round(spent, 1)}) + "\n"
        )
        if entry.exists():  # an incomplete entry of an older layout: replaced
            remove_build_dir(entry)
        os.rename(out, entry)
    return spent


def debootstrap(
    root: Path, mirror: str, log_path: Path, *, packages: tuple[str, ...] = PACKAGES, suite: str = SUITE
) -> float:
    started = time.monotonic()
    argv = [
        "debootstrap",
        f"--variant={VARIANT}",
        "--include=" + ",".join(packages),
        suite,
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
            f"debootstrap {suite} from {mirror} failed ({tail}); see {log_path}, check that this machine "
            f"reaches the mirror or set {MIRROR_ENV}"
        )
    return time.monotonic() - started


def clean_package_caches(root: Path) -> None:
    """What debootstrap downloaded is not part of a server; apt can fetch the lists again."""
    for leftover in [
        *(root / "var/cache/apt/archives").glob("*.deb"),
        *(root / "var/lib/apt/lists").glob("*_*"),
    ]:
        leftover.unlink()


# ---------------------------------------------------------------- configuring a root


def kernel_files(root: Path) -> tuple[str, str]:
    """(vmlinuz-..., initrd.img-...) in the root's /boot."""
    kernels = sorted(p.name for p in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageBuildError(
            "debootstrap installed no kernel in /boot: is linux-image-cloud-amd64 available?"
        )
    kernel = kernels[-1]
    return kernel, "initrd.img-" + kernel.removeprefix("vmlinuz-")


def write_files(root: Path, files: Mapping[str, str], values: Mapping[str, str]) -> None:
    """Write ``files`` (guest path -> text; ``{name}`` placeholders filled from ``values``) into the root."""
    for guest_path, template in files.items():
        target = root / guest_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(template.format(**values) if "{" in template else template)
        target.chmod(0o644)


def fingerprint_of(public_line: str) -> str:
    """SHA256:... of an OpenSSH public key line, as ``ssh-keygen -lf`` shows it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ---------------------------------------------------------------- the disk


def make_disk(
    disk: Path, root: Path, root_uuid: str, *, image_size: int, label: str, seed: str, work: Path
) -> None:
    """A sparse raw disk: MBR with one bootable partition at PART_START, ext4 made from ``root``, extlinux.

    ``seed`` (hex) gives the MBR's disk signature, so the same recipe gives the same disk.
    """
    part_size = image_size - PART_START
    with open(disk, "wb") as handle:
        handle.truncate(image_size)
    write_mbr(disk, [MbrPartition(PART_START, part_size, 0x83, bootable=True)], int(seed[:8], 16))

    conf = work / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    env = {**os.environ, "MKE2FS_CONFIG": str(conf)}
    run(
        [
            "mke2fs", "-q", "-F", "-t", "ext4", "-U", root_uuid, "-L", label,
            "-E", f"offset={PART_START},nodiscard", "-d", str(root), str(disk), f"{part_size // 1024}k",
        ],
        "mke2fs -d",
        env=env,
    )  # fmt: skip

    loop = run(
        ["losetup", "--find", "--show", "-o", str(PART_START), "--sizelimit", str(part_size), str(disk)],
        "losetup",
    ).strip()
    mountpoint = work / "mnt"
    mountpoint.mkdir(exist_ok=True)
    try:
        run(["e2fsck", "-f", "-n", loop], "e2fsck of the new root filesystem")
        run(["mount", "-t", "ext4", loop, str(mountpoint)], "mount of the new root filesystem")
        try:
            run(["extlinux", "--install", str(mountpoint / "boot/extlinux")], "extlinux --install")
        finally:
            run(["umount", str(mountpoint)], "umount")
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)

    code = SYSLINUX_MBR.read_bytes()[:MBR_CODE_SIZE]
    with open(disk, "r+b") as handle:
        handle.write(code)  # boot code only: the signature and partition table behind it stay
