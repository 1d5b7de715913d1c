"""Redeploys that keep stations connected (docs/reliability.md, "Redeploys").

Theory of operation:

1. The shim closes a node Node-RED redeploys with ``removed`` false (a
   close because the flows stop is ``removed`` true). The engine then parks
   it (:func:`park`) instead of stopping it: its server (CSMS) or client
   (CS) and every station link stay open. The parked node still decides on
   new connections with its old settings and keeps its stations' state, but
   what it would tell the flow is held (:class:`HeldHost`, at most
   :data:`MAX_HELD` messages, in order), and the requests it receives wait
   in their links. The inputs that waited on it end now with ``done(err)``;
   its requests still on the wire become orphans, whose late answers are
   dropped without a word; those not sent yet are taken back.
2. A ``create`` of the same id hands the parked node to the new one
   (:func:`start_after`). When what the open connections depend on did not
   change (CSMS: port, path, TLS on or off, client certificates or not; CS:
   URL, cbId, password, TLS, versions, security profile), the new node takes
   over the server or client, the links and the stations' state
   (registrations, connection times; CS: its offline store), applies its
   own settings to them, closes the stations its settings no longer admit,
   then hears the held messages and, from every link, the requests still
   unanswered (the old flow can no longer answer them). Otherwise the parked
   node stops, the log says how many stations that disconnected and why, and
   the new node starts as a new one does.
3. The engine stops a parked node nobody took within :data:`PARK_SECONDS`
   (a deploy whose new node never came), one whose port another node wants
   (:func:`conflicts`), and every node when its shim goes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ..fleet.remote import FleetServer
from ..rpc.registration import RegistrationStatus
from ..transport import AuthDecision, StationLink
from ..transport.csms_server import route_for
from .base import NodeHost, OcppNode
from .cs import CsNode
from .csms import CsmsNode

__all__ = ["MAX_HELD", "PARK_SECONDS", "HeldHost", "conflicts", "park", "start_after", "stop"]

#: How long a parked node waits for the node that takes it over. Node-RED
#: creates a redeploy's nodes once every closed node is done closing (it
#: gives each up to 15 s): after that, the flow was stopped.
PARK_SECONDS = 20.0

#: Messages for the flow held while parked; beyond, the oldest go first.
MAX_HELD = 10_000

#: Close code and names of the stations a redeploy closes, in the log.
POLICY_VIOLATION = 1008
NAMES_IN_LOG = 10


class HeldHost:
    """The :class:`NodeHost` of a parked node: holds what it says for the next node.

    ``done`` goes through at once (the inputs are the shim's, whichever node
    ends them); a status is dropped (the next node shows its own).
    """

    def __init__(self, real: NodeHost, limit: int = MAX_HELD) -> None:
        self.real = real
        self.dropped = 0
        self._held: deque[tuple[str, tuple[Any, ...]]] = deque(maxlen=limit)

    def send(self, port: int, msg: dict[str, Any]) -> None:
        self._hold("send", (port, msg))

    def status(
        self, fill: str | None = None, shape: str | None = None, text: str | None = None
    ) -> None:
        return None

    def done(self, seq: int, error: str | None = None) -> None:
        self.real.done(seq, error)

    def log(self, level: str, text: str, msg: dict[str, Any] | None = None) -> None:
        self._hold("log", (level, text, msg))

    def _hold(self, kind: str, args: tuple[Any, ...]) -> None:
        if len(self._held) == self._held.maxlen:
            self.dropped += 1
        self._held.append((kind, args))

    def replay(self, host: NodeHost) -> None:
        """Say to ``host`` what was held, in order."""
        if self.dropped:
            host.log(
                "warn",
                f"{self.dropped} messages for the flow while redeploying were dropped "
                f"(over {self._held.maxlen})",
            )
        held, self._held = self._held, deque(maxlen=self._held.maxlen)
        for kind, args in held:
            if kind == "send":
                host.send(*args)
            else:
                host.log(*args)


def _links(node: OcppNode) -> list[StationLink]:
    if isinstance(node, CsmsNode):
        return list(node.stations.values())
    if isinstance(node, CsNode) and node.link is not None:
        return [node.link]
    return []


async def park(node: OcppNode) -> None:
    """Keep ``node``'s connections for the next node of its id (rule 1)."""
    real = node.host
    held = HeldHost(real)
    node.host = held
    node.parked = True
    if isinstance(node, CsmsNode):
        node._refusals.host = held
    if isinstance(node, CsNode):
        # its own requests (kept transaction messages, BootNotification again)
        # end with the tasks that wait for them
        node._orphans.update(node._own_calls)
    await node.tasks.cancel()
    withdrawn: set[tuple[StationLink, str]] = set()
    for link in _links(node):
        withdrawn.update((link, call.message_id) for call in link.withdraw_queued())
    for key, context in node._calls.items():
        link, message_id = key
        if key in withdrawn:
            reason = f"{link.cb_id}: request {message_id} not sent: the node was redeployed"
        else:
            reason = (
                f"{link.cb_id}: no answer to request {message_id} before the node was "
                "redeployed; a later answer is dropped"
            )
            node._orphans.add(key)
        if context.seq is not None:
            real.done(context.seq, reason)
    node._calls.clear()
    node._orphans -= withdrawn
    if isinstance(node, CsNode):
        node.end_inputs("the node was redeployed")


async def stop(node: OcppNode, reason: str | None = None) -> None:
    """Stop a parked node as a close stops any (rule 3); ``reason`` goes in the
    log when that disconnects stations."""
    held = node.host
    if isinstance(held, HeldHost):
        node.host = held.real
        if isinstance(node, CsmsNode):
            node._refusals.host = held.real
    count = len(_links(node))
    if reason is not None and count:
        node.host.log("warn", f"redeploy: {count} station(s) disconnected: {reason}")
    await node.stop()


def conflicts(parked: OcppNode, node: OcppNode) -> bool:
    """True when ``node`` (of another id) wants what ``parked`` holds: its port."""
    return (
        isinstance(parked, CsmsNode)
        and isinstance(node, CsmsNode)
        and parked.server is not None
        and parked.fleet is None
        and node.fleet is None
        and node.port == parked.port
    )


async def start_after(node: OcppNode, parked: OcppNode | None) -> None:
    """Start ``node``, taking over ``parked`` (its predecessor of the same id) if it can."""
    if parked is None:
        await node.start()
        return
    if isinstance(node, CsmsNode) and isinstance(parked, CsmsNode):
        if await _take_over_csms(node, parked):
            return
    elif isinstance(node, CsNode) and isinstance(parked, CsNode):
        if await _take_over_cs(node, parked):
            return
    await stop(parked)
    await node.start()


# -- the CSMS node ---------------------------------------------------------------------


def _csms_obstacle(new: CsmsNode, old: CsmsNode) -> tuple[str | None, Any]:
    """Why ``new`` cannot keep ``old``'s stations (``None``: it can), and its TLS context."""
    if old.server is None:
        return "the node was not listening", None
    if new.fleet is not None or old.fleet is not None or new.fleet_problem:
        return _fleet_obstacle(new, old), None
    if new.port_problem or new.port != old.port:
        return f"the port changed from {old.port} to {new.config.get('port')}", None
    if route_for(new.path) != route_for(old.path):
        return f"the path changed from {old.path or '/'!r} to {new.path or '/'!r}", None
    if new.versions_problem:
        return new.versions_problem, None
    if new.auth_problem:
        return new.auth_problem, None
    try:
        ssl_context = new._ssl_context()
    except ValueError as exc:
        return str(exc), None
    had_tls = old.server.options.ssl_context is not None
    if (ssl_context is not None) != had_tls:
        return "TLS was turned " + ("off (wss:// to ws://)" if had_tls else "on"), None
    if (new.security_profile == 3) != (old.security_profile == 3):
        return (
            f"the security profile changed from {old.security_profile} to "
            f"{new.security_profile} (client certificates)",
            None,
        )
    return None, ssl_context


def _fleet_obstacle(new: CsmsNode, old: CsmsNode) -> str | None:
    """Why ``new`` cannot go on with ``old``'s fleet connection, or ``None``."""
    if new.fleet_problem:
        return new.fleet_problem
    if (new.fleet is None) != (old.fleet is None):
        return "the node switched between direct and fleet mode"
    if new.fleet_identity != old.fleet_identity:
        return "the fleet's broker, group or broker credentials changed"
    if new.versions_problem:
        return new.versions_problem
    if new.auth_problem:
        return new.auth_problem
    return None


async def _no_longer_admitted(
    new: CsmsNode, old: CsmsNode, link: StationLink, credentials: Any, client_cn: Any
) -> str | None:
    """Why a connected station must go under ``new``'s settings, or ``None``."""
    if new.fleet is not None:
        return None  # its gateway admitted it, against the list published below
    if link.version not in new.versions:
        return f"OCPP {link.version.name} is no longer accepted"
    if new.security_profile == 3:
        return None  # its certificate was checked in its TLS handshake, its CN is its cbId
    cb_id = link.cb_id
    if cb_id in old.auth_list and new.auth_list.stored(cb_id) == old.auth_list.stored(cb_id):
        return None  # the same entry admits the same credentials
    decision = await new.authenticate(cb_id, credentials, client_cn)
    if decision in (AuthDecision.ACCEPT, AuthDecision.ALREADY_CONNECTED):
        return None
    if decision is AuthDecision.UNKNOWN_IDENTITY:
        return "no longer in the CS Auth list"
    if decision is AuthDecision.BUSY:  # it is checked again when it reconnects
        return "its password could not be checked now (too many logins being checked)"
    return "its password is no longer valid"


async def _take_over_csms(new: CsmsNode, old: CsmsNode) -> bool:
    obstacle, ssl_context = _csms_obstacle(new, old)
    if obstacle is not None:
        if old.stations:
            new.host.log(
                "warn",
                f"redeploy: {len(old.stations)} station(s) disconnected: {obstacle}",
            )
        return False
    server = old.server
    assert server is not None  # _csms_obstacle says so
    old.server = None
    new.server = server
    new.stations = old.stations
    new.connected_since = old.connected_since
    new.registrations = old.registrations
    new._boot_requests = old._boot_requests
    new._refusals_told = old._refusals_told
    new._orphans = old._orphans
    server.update(new.server_options(ssl_context), new)
    if isinstance(server, FleetServer):
        new.fleet = old.fleet  # the same instance: its answers topic stays
        server.on_broker = new._broker_state
        server.publish_auth(new.auth_list)
    old._refusals.report()
    held = old.host
    if isinstance(held, HeldHost):
        held.replay(new.host)
    going: dict[StationLink, str] = {}
    for session, admission in server.connections():
        problem = await _no_longer_admitted(
            new, old, session, admission.credentials, admission.client_cn
        )
        if problem is not None:
            going[session] = problem
    if going:
        await asyncio.gather(
            *(link.close(POLICY_VIOLATION, problem) for link, problem in going.items())
        )
        names = ", ".join(
            f"{link.cb_id} ({problem})" for link, problem in list(going.items())[:NAMES_IN_LOG]
        )
        more = len(going) - NAMES_IN_LOG
        new.host.log(
            "warn",
            f"redeploy: closed {len(going)} station(s) the new settings do not admit: "
            f"{names}{f' and {more} more' if more > 0 else ''}",
        )
    new._show_connection_count()
    handed = _hand_over_requests(new)
    new.host.log(
        "info",
        f"redeploy: {len(new.stations)} station(s) kept connected, "
        f"{handed} request(s) handed to the new flow",
    )
    return True


def _hand_over_requests(node: OcppNode) -> int:
    """Put on the flow every request its links still wait to have answered; how many."""
    handed = 0
    for link in _links(node):
        for event in link.unanswered():
            # the boot rules saw it when it came: straight to the flow
            OcppNode._emit_request(node, link, event)
            handed += 1
    return handed


# -- the CS node -----------------------------------------------------------------------

_CS_CONNECTION = (
    ("csms_url", "CSMS URL"),
    ("cb_id", "cbId"),
    ("password", "password"),
    ("tls", "TLS configuration"),
    ("versions", "OCPP versions"),
    ("security_profile", "security profile"),
)


def _cs_obstacle(new: CsNode, old: CsNode) -> str | None:
    if old.client is None or old.link is None:
        return "it was not connected"
    for attribute, label in _CS_CONNECTION:
        if getattr(new, attribute) != getattr(old, attribute):
            return f"its {label} changed"
    return new._config_problem()


async def _take_over_cs(new: CsNode, old: CsNode) -> bool:
    obstacle = _cs_obstacle(new, old)
    if obstacle is not None:
        if old.link is not None:
            new.host.log("warn", f"{old.cb_id}: redeploy: reconnecting, {obstacle}")
        return False
    client, link = old.client, old.link
    assert client is not None and link is not None  # _cs_obstacle says so
    old.client = None
    new.client = client
    new.link = link
    new.registration = old.registration
    new._last_boot = old._last_boot
    new._online = old._online
    new._ignored = old._ignored
    new._orphans = old._orphans
    new.store = old.store  # the same file for a user dir; in memory, the old node's
    client.backoff = new.backoff
    client.update(new.link_options, new)
    new._link_up.set()
    new.tasks.start(new._send_transactions())
    new._show_connected()
    held = old.host
    if isinstance(held, HeldHost):
        held.replay(new.host)
    if new.boot_rules and new.registration.status in (
        RegistrationStatus.PENDING,
        RegistrationStatus.REJECTED,
    ):
        new._booter = new.tasks.start(new._boot_again())
    handed = _hand_over_requests(new)
    new.host.log(
        "info",
        f"{new.cb_id}: redeploy: connection kept, {handed} request(s) handed to the new flow",
    )
    return True
