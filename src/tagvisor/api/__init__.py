"""Control of a running machine: a versioned JSON protocol on a Unix socket.

:class:`Controller` runs a machine on a thread and carries out requests on it;
:class:`ApiServer` serves a controller on a socket (mode 0600); :class:`ApiClient`
talks to one. docs/api-socket.md describes the protocol.
"""

from tagvisor.api.client import ApiClient, ApiError, ApiUnavailable
from tagvisor.api.controller import Controller
from tagvisor.api.protocol import PROTOCOL, Request, RequestError, parse_request
from tagvisor.api.server import ApiServer, ApiServerError

__all__ = [
    "PROTOCOL",
    "ApiClient",
    "ApiError",
    "ApiServer",
    "ApiServerError",
    "ApiUnavailable",
    "Controller",
    "Request",
    "RequestError",
    "parse_request",
]
