"""The root of tagvisor's exception hierarchy.

Every error tagvisor raises on purpose derives from :class:`TagvisorError`, so a caller
can catch the project's errors without catching programming mistakes. Each layer adds
its own subclasses (``tagvisor.arch.errors``, and later the KVM layer's ``KvmError``).
"""


class TagvisorError(Exception):
    """Base class of every error tagvisor raises deliberately."""
