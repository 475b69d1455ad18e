"""What booting a Linux kernel needs from the VMM: the arm64 Image header, where the
kernel, initrd and device tree go in guest RAM, the device tree itself, and the
in-kernel GICv3 (docs/linux-guests.md)."""
