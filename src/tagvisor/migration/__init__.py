"""Live migration that keeps every tag: pre-copy over TCP, each page with its tags."""

from tagvisor.migration.destination import IncomingError, IncomingReport, incoming, receive
from tagvisor.migration.postcopy import PostcopyError
from tagvisor.migration.source import (
    MigrationCommitted,
    MigrationError,
    MigrationRefused,
    MigrationReport,
    migrate,
)
from tagvisor.migration.transport import Listener, TcpAddress, parse_address

__all__ = [
    "IncomingError",
    "IncomingReport",
    "Listener",
    "MigrationCommitted",
    "MigrationError",
    "MigrationRefused",
    "MigrationReport",
    "PostcopyError",
    "TcpAddress",
    "incoming",
    "migrate",
    "parse_address",
    "receive",
]
