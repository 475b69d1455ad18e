"""Devices the VMM emulates on MMIO exits (see docs/guest-abi.md for the map)."""
