"""tagvisor: memory-tagged (Arm MTE) virtual machines in Python.

Layers, bottom to top (imports only point down): ``arch`` (the MTE architecture),
then the host kernel and KVM models, the VMM, snapshot and migration, and the CLI.
"""

__version__ = "0.1.0"
