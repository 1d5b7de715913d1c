"""Sockets: the CSMS server (aiohttp), the CS client (websockets), and the
session that binds an OCPP-J connection to either."""

from __future__ import annotations

from .backoff import Backoff
from .cs_client import ClientOptions, CsClient, station_url
from .csms_server import AuthDecision, CsmsServer, ServerOptions
from .identity import MAX_IDENTITY_LENGTH, identity_problem
from .session import OcppSession, SocketClosed, TextSocket

__all__ = [
    "AuthDecision",
    "Backoff",
    "ClientOptions",
    "CsClient",
    "CsmsServer",
    "OcppSession",
    "ServerOptions",
    "SocketClosed",
    "TextSocket",
    "MAX_IDENTITY_LENGTH",
    "identity_problem",
    "station_url",
]
