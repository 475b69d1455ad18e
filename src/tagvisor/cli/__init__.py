"""The ``tagvisor`` command."""
