"""The recovery appliance's disk image: Debian, python3 for the agent, sshd, and nothing that is secret.

``python -m providers.kvm.appliance_image build OUT`` (as root) builds it from Debian packages with
debian_image.py, the way the test bed's source server is built and from the same cached debootstrap, and
writes a qcow2 to OUT; a KVM provider's ``appliance_image`` names that file. The provider uploads it once
into the storage pool as a read-only base volume and boots every appliance from a qcow2 overlay over it.

What the image does at boot: systemd-networkd asks the appliance network's DHCP server for an address on
every NIC (libvirt's dnsmasq, whose lease tells the provider where the appliance is), and a unit that
sshd requires installs the appliance's own identity from its config disk (appliance_config.py): the SSH
host key and the authorized client key, both minted by the provider per appliance. The image holds no
host key, no authorized key and no machine id of its own, so no two appliances share one.

Replica volumes are hot-plugged as SCSI LUNs of a virtio-scsi controller, each with a serial, so udev
names them ``/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<serial>`` whatever order they arrive in; the
mirror keeps each one's block map under ``/var/lib/hvmigrate/maps`` on the appliance's root.

Builds are cached by recipe hash in ``$HVMIGRATE_IMAGE_CACHE`` (default /var/cache/hvmigrate), as the test
bed's images are: a second ``build`` with the same recipe only copies the cached image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import appliance_config, debian_image
from .appliance_layout import CONFIG_DEVICE, MAPS_DIR
from .debian_image import ImageBuildError

MiB = 1024**2
GiB = 1024**3

CACHE_ENV = "HVMIGRATE_IMAGE_CACHE"
DEFAULT_CACHE = Path("/var/cache/hvmigrate")
IMAGE_NAME = "appliance.qcow2"

PACKAGES = debian_image.PACKAGES  # the shared set: one debootstrap serves this image and the test bed's
IMAGE_SIZE = 4 * GiB  # virtual; block maps of many large replicas live on this root
ROOT_LABEL = "hvmroot"
HOSTNAME = "hvm-appliance"  # until the config disk names it
CONFIG_PROGRAM = "/usr/local/lib/hvmigrate/appliance-config.py"
CONFIG_UNIT = "hvmigrate-appliance-config.service"
_CONFIG_DEVICE_UNIT = "dev-disk-by\\x2did-virtio\\x2dhvmigrate\\x2dconfig.device"  # systemd-escape --path

FILES: dict[str, str] = {
    "/etc/hostname": f"{HOSTNAME}\n",
    "/etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "/etc/fstab": "UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n",
    "/etc/network/interfaces": "auto lo\niface lo inet loopback\n",
    "/etc/systemd/network/20-appliance.network": (
        "# Every NIC asks for an address: the DHCP lease tells the provider where the appliance is.\n"
        "[Match]\nName=en* eth*\n\n"
        "[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n\n"
        "[DHCPv4]\nClientIdentifier=mac\nUseDNS=no\nUseDomains=no\n"
    ),
    "/etc/ssh/sshd_config.d/10-appliance.conf": (
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n"
    ),
    f"/etc/systemd/system/{CONFIG_UNIT}": (
        "[Unit]\n"
        "Description=hvmigrate appliance: SSH keys and host name from the config disk\n"
        f"Requires={_CONFIG_DEVICE_UNIT}\n"
        f"After={_CONFIG_DEVICE_UNIT} local-fs.target\n"
        "Before=ssh.service\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=/usr/bin/python3 {CONFIG_PROGRAM} {CONFIG_DEVICE}\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    ),
    "/etc/systemd/system/ssh.service.d/10-hvmigrate.conf": (
        f"# no keys of its own: sshd starts once the config disk gave them\n[Unit]\n"
        f"Requires={CONFIG_UNIT}\nAfter={CONFIG_UNIT}\n"
    ),
    "/boot/extlinux/extlinux.conf": debian_image.EXTLINUX_CONF,
}
RECIPE_VERSION = 1  # bump when the build steps change in a way the data above does not show


@dataclass(frozen=True)
class ApplianceImage:
    path: Path  # qcow2, read-only in the cache
    manifest: dict[str, Any]


def config_program() -> str:
    return Path(appliance_config.__file__).read_text()


def recipe() -> dict[str, Any]:
    """Every input that shapes the image; its hash names the cache entry."""
    return {
        "version": RECIPE_VERSION,
        "root": debian_image.root_recipe(PACKAGES),
        "image_size": IMAGE_SIZE,
        "part_start": debian_image.PART_START,
        "root_label": ROOT_LABEL,
        "mke2fs_conf": debian_image.MKE2FS_CONF,
        "files": dict(sorted(FILES.items())),
        "config_program": config_program(),
    }


def recipe_hash() -> str:
    return debian_image.recipe_hash(recipe())


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def entry(cache: Path) -> Path:
    return cache / f"appliance-{recipe_hash()[:16]}"


def missing_tools() -> list[str]:
    return debian_image.missing_tools({"qemu-img": "qemu-utils"})


def cached(cache: Path | None = None) -> ApplianceImage | None:
    directory = entry(cache or cache_dir())
    if not (directory / "manifest.json").is_file():
        return None
    return ApplianceImage(directory / IMAGE_NAME, json.loads((directory / "manifest.json").read_text()))


def ensure(cache: Path | None = None, *, log: Callable[[str], None] = print) -> ApplianceImage:
    """The image of the current recipe: from the cache, or built now (minutes; less when the
    debootstrapped root is cached already) and cached."""
    cache = cache or cache_dir()
    if (found := cached(cache)) is not None:
        return found
    if problems := missing_tools():
        raise ImageBuildError("cannot build the appliance image: " + "; ".join(problems))
    with debian_image.cache_lock(cache, log, "the appliance image"):
        if (found := cached(cache)) is not None:
            return found
        return build(cache, log=log)


def build(cache: Path, *, log: Callable[[str], None] = print) -> ApplianceImage:
    """Build into a scratch directory of ``cache``, renamed into place when complete; hold the lock."""
    digest = recipe_hash()
    final = entry(cache)
    started = time.monotonic()
    with debian_image.build_dir(cache, digest) as work:
        root = work / "root"
        out = work / "out"
        out.mkdir()
        debootstrap_seconds = debian_image.prepared_root(cache, root, packages=PACKAGES, log=log)
        root_uuid = str(uuid.uuid4())
        kernel, initrd = debian_image.kernel_files(root)
        log("configuring the appliance root: DHCP, sshd without keys, the config-disk unit")
        _configure_root(root, {"root_uuid": root_uuid, "kernel": kernel, "initrd": initrd})
        log(f"making the appliance disk ({IMAGE_SIZE // GiB} GiB virtual) and converting it to qcow2")
        raw = work / "disk.raw"
        debian_image.make_disk(
            raw, root, root_uuid, image_size=IMAGE_SIZE, label=ROOT_LABEL, seed=digest, work=work
        )
        image = out / IMAGE_NAME
        debian_image.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", str(raw), str(image)],
            "qemu-img convert",
        )
        raw.unlink()
        image.chmod(0o444)
        manifest = {
            "recipe_hash": digest,
            "recipe": recipe(),
            "mirror": debian_image.apt_mirror(),
            "root_uuid": root_uuid,
            "kernel": kernel,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "debootstrap_seconds": round(debootstrap_seconds, 1),  # 0: the cached debootstrap served
            "build_seconds": round(time.monotonic() - started, 1),
            "bytes": image.stat().st_size,
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(out, final)
        log(f"appliance image ready: {final / IMAGE_NAME}")
    return ApplianceImage(final / IMAGE_NAME, manifest)


def _configure_root(root: Path, values: dict[str, str]) -> None:
    debian_image.write_files(root, FILES, values)
    program = root / CONFIG_PROGRAM.lstrip("/")
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_text(config_program())  # not a template: it is Python, braces and all
    program.chmod(0o644)
    # no identity of its own: the config disk brings the keys, systemd makes a machine id at first boot
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    shutil.rmtree(root / "root/.ssh", ignore_errors=True)
    maps = root / MAPS_DIR.lstrip("/")
    maps.mkdir(parents=True, exist_ok=True)
    maps.chmod(0o700)
    debian_image.run(
        ["chroot", str(root), "systemctl", "enable", "systemd-networkd.service", CONFIG_UNIT],
        "systemctl enable (in the image)",
    )
    debian_image.clean_package_caches(root)


# ---------------------------------------------------------------- by hand


def export(image: ApplianceImage, out: Path) -> Path:
    """Copy the cached image to ``out`` (written beside and renamed, so ``out`` is whole or absent)."""
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(image.path, tmp)
    tmp.chmod(0o444)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m providers.kvm.appliance_image",
        description="Build the KVM recovery appliance image from Debian packages (as root; minutes the "
        "first time, cached by recipe in $HVMIGRATE_IMAGE_CACHE or /var/cache/hvmigrate), and write it "
        "as qcow2 to OUT, the path a kvm provider's appliance_image names.",
    )
    parser.add_argument("command", choices=["build", "info"])
    parser.add_argument("out", nargs="?", type=Path, help="build: where to write the qcow2 image")
    parser.add_argument(
        "--cache", type=Path, help=f"cache directory (default: ${CACHE_ENV} or {DEFAULT_CACHE})"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            found = cached(args.cache)
            if found is None:
                print("no appliance image for this recipe in the cache", file=sys.stderr)
                return 1
            print(json.dumps(found.manifest | {"path": str(found.path)}, indent=2))
            return 0
        if args.out is None:
            parser.error("build needs OUT, the file to write the image to")
        image = ensure(args.cache)
        written = export(image, args.out)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = image.manifest
    print(
        f"appliance image {written} ({written.stat().st_size // MiB} MiB qcow2, kernel {manifest['kernel']}, "
        f"recipe {manifest['recipe_hash'][:16]}, built in {manifest['build_seconds']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
