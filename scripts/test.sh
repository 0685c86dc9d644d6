#!/usr/bin/env bash
# Install everything the tests need (Debian packages, .venv with test extras), then run every test.
# Services the tests use (BIND, sshd, libvirtd, vcsim as they arrive) are started by tests/services/
# fixtures, never by hand. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# libvirt-dev and pkg-config build libvirt-python; ovmf lets the UEFI tests run; lvm2 the LVM snapshot ones;
# exfat-fuse and exfatprogs give the files tests a real case-insensitive target (exFAT through FUSE);
# debootstrap and extlinux build the bootable guest of the test bed (cached in /var/cache/hvmigrate-testbed);
# golang-go and golang-github-vmware-govmomi-dev build vcsim, the ESX tests' vSphere endpoint; ntfs-3g and
# libhivex-bin stage a Windows replica (NTFS and registry hive edits without mounting).
packages=(e2fsprogs bind9 bind9-utils openssh-server openssh-client rsync qemu-utils
  libvirt-daemon-system qemu-system-x86 libvirt-dev pkg-config ovmf dnsmasq-base lvm2
  debootstrap extlinux syslinux-common golang-go golang-github-vmware-govmomi-dev ntfs-3g libhivex-bin
  exfat-fuse exfatprogs)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages (run as root to install): ${missing[*]}" >&2
  fi
fi
scripts/bootstrap.sh test,kvm,esx,hyperv
.venv/bin/ruff check orchestrator providers tests bench
# Two workers: the libvirt tests (marked `libvirt`, one TCG guest at a time) run one after another on one of
# them while everything else runs on the other (tests/conftest.py). `scripts/test.sh -n 0` runs serially.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup "$@"
