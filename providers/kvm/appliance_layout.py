"""What the appliance image (appliance_image.py) and the provider (appliance.py) agree on inside the guest.

Kept apart so that the provider does not import the image builder (``python -m
providers.kvm.appliance_image`` would otherwise find itself imported already, through the package).
"""

from providers import appliance_guest

CONFIG_SERIAL = "hvmigrate-config"  # the config disk's serial: udev names it /dev/disk/by-id/virtio-<serial>
CONFIG_DEVICE = f"/dev/disk/by-id/virtio-{CONFIG_SERIAL}"
MAPS_DIR = appliance_guest.MAPS_DIR  # block maps of the attached replica volumes, on the appliance's root
SCSI_BY_ID = "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_"  # + a hot-plugged LUN's serial
