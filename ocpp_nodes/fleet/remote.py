"""The CSMS node in fleet mode: every station of the fleet, wherever its socket is.

:class:`FleetServer` stands where a CSMS node's listening server stands
(:class:`~ocpp_nodes.transport.factory.StationServer`): instead of
listening, it talks to the broker. Each station a gateway holds (its
retained presence, or a frame from it) becomes an
:class:`~ocpp_nodes.transport.session.OcppSession` over a
:class:`BrokerSocket`, so the node sees the same links, events, timeouts and
errors as in direct mode. The gateway holding the station has already
checked every frame against the schemas and answered malformed ones; the
session here checks again what the flow sends, so a bad request ends in the
flow's ``done(err)`` at once.

Theory of operation:

1. Subscriptions: the stations' CALLs and SENDs through the group's shared
   subscription (each goes to one Node-RED instance of the group), this
   instance's answers topic, every presence record and every gateway record
   (retained: an instance that starts learns the fleet at once).
2. A station's link opens on its online presence, or on the first frame of
   a connection not known yet (topics are not ordered with each other); it
   closes on the presence that says the connection ended, when its gateway's
   will says the gateway is gone, or when another connection of the same
   cbId appears (the newest wins, as in direct mode).
3. What the flow sends goes to ``station/<cbId>/down``: a CALL with this
   instance's answers topic, its MessageId as correlation data, and the call
   timeout as the message's expiry, so a command never reaches a station
   after the flow gave up on it. While the broker is unreachable, sending
   raises :class:`~ocpp_nodes.rpc.OutgoingError` at once. When the broker
   says that nobody subscribes to the station's topic (no gateway holds it),
   its link ends at once, and with it what waited for the station.
4. Closing a link asks its gateway to close the websocket (a ``close``
   control message) and ends the link here at once.
5. The node's *CS Auth* list is published retained on ``auth/<cbId>`` as
   salted hashes (a plain entry is hashed first: PBKDF2-SHA256, 10,000
   rounds, in a thread); the gateways check logins against them. An entry
   on the broker that the list does not hold is removed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from paho.mqtt.client import MQTTMessage

from ..rpc import VERSIONS, OcppVersion, OutgoingError, Role
from ..transport.auth_list import VERIFIER, AuthList
from ..transport.csms_server import Admission, ServerOptions, StationListener
from ..transport.passwords import looks_like_hash, make_hash, parse_hash, verify
from ..transport.session import OcppSession, SocketClosed
from ..transport.tls import TlsMaterial, client_context
from . import topics as fleet
from .broker import Broker, BrokerOptions, broker_address, publish_properties
from .topics import Presence, Topics, group_problem

__all__ = [
    "PUBLISHED_PBKDF2_ROUNDS",
    "BrokerSocket",
    "FleetOptions",
    "FleetServer",
    "fleet_options",
    "remote_session_class",
]

log = logging.getLogger(__name__)

#: rounds of the PBKDF2-SHA256 hash a plain *CS Auth* entry is published as
#: (about 2 ms here; OCPP's Basic auth passwords are 16-40 random characters)
PUBLISHED_PBKDF2_ROUNDS = 10_000

#: plain passwords hashed per turn of a password thread
HASH_BATCH = 100

#: connections closed here whose late frames are ignored rather than reopened
CLOSED_KEPT = 4096


@dataclass(frozen=True)
class FleetOptions:
    """Which broker and fleet group; ``instance`` names this node's answers topic."""

    broker: BrokerOptions
    group: str
    instance: str = field(default_factory=lambda: secrets.token_hex(6))


def fleet_options(
    config: dict[str, Any], credentials: dict[str, Any], tls: dict[str, Any] | None
) -> FleetOptions:
    """A CSMS node's fleet settings (docs/fleet.md); raises ``ValueError`` saying what is wrong.

    ``fleet_broker`` (``mqtt://`` or ``mqtts://``), ``fleet_group``, the
    ``tls-config`` of ``fleet_tls``, the credentials ``fleet_username`` and
    ``fleet_password``.
    """
    url = str(config.get("fleet_broker") or "").strip()
    if not url:
        raise ValueError("fleet mode needs the broker's URL, e.g. mqtt://127.0.0.1:1883")
    _, _, secure = broker_address(url)
    group = config.get("fleet_group") or "default"
    problem = group_problem(group)
    if problem is not None:
        raise ValueError(problem)
    material = TlsMaterial.from_options(tls)
    if material is not None and not secure:
        raise ValueError("a TLS configuration for the broker needs an mqtts:// URL")
    try:
        context = client_context(material) if secure else None
    except ssl.SSLError as exc:  # never echoes key material
        raise ValueError(f"the broker's TLS configuration does not load: {exc.reason}") from None
    instance = secrets.token_hex(6)
    return FleetOptions(
        BrokerOptions(
            url=url,
            client_id=f"ocpp-node-{group}-{instance}",
            username=credentials.get("fleet_username") or None,
            password=credentials.get("fleet_password") or None,
            tls=context,
        ),
        group,
        instance,
    )


def frame_message_id(text: str) -> str | None:
    """The MessageId of a frame text as our serializer writes it (``[2,"id",...``)."""
    if len(text) < 5 or text[2] != "," or text[3] != '"':
        return None
    end = text.find('"', 4)
    if end < 0:
        return None
    message_id = text[4:end]
    if "\\" in message_id:  # an escape in the id: read it properly
        try:
            parsed = json.loads(text)
            return parsed[1] if isinstance(parsed[1], str) else None
        except (ValueError, IndexError):
            return None
    return message_id


class BrokerSocket:
    """A station's :class:`~ocpp_nodes.transport.session.TextSocket` through the broker."""

    def __init__(self, server: FleetServer, cb_id: str, presence: Presence) -> None:
        self.server = server
        self.cb_id = cb_id
        self.presence = presence
        self.down = server.topics.down(cb_id)
        self._frames: deque[str] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.ended: str | None = None  # why, once ended
        #: a newer connection of the station is here: closing this one ends it here only
        self.superseded = False

    @property
    def connection(self) -> str:
        return self.presence.connection

    def feed(self, text: str) -> None:
        if self.ended is not None:
            return
        self._frames.append(text)
        self._wake()

    def end(self, reason: str) -> None:
        """End the link here (nothing is published)."""
        if self.ended is None:
            self.ended = reason
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> str:
        while not self._frames:
            if self.ended is not None:
                raise SocketClosed(self.ended)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        return self._frames.popleft()

    async def send(self, text: str) -> None:
        self.server.send_down(self, text)

    async def close(self, code: int, reason: str) -> None:
        if self.ended is None and self.superseded:
            self.end(reason)  # its gateway closes the websocket itself (gateway rule 5)
        if self.ended is None:
            self.server.request_close(self, code, reason)
            self.end(reason or f"closed by the CSMS (code {code})")
            self.server.closed_here(self.connection)


class RemoteSession(OcppSession):
    """An :class:`OcppSession` whose sends fail at once while the broker is unreachable."""

    socket: BrokerSocket

    def _check_broker(self) -> None:
        broker = self.socket.server.broker
        if broker is None or not broker.connected:
            problem = broker.problem if broker is not None else "not connected"
            raise OutgoingError(f"the fleet's broker is unreachable ({problem}); nothing was sent")

    def send_call(self, action: str, payload: Any, *, message_id: str | None = None) -> str:
        self._check_broker()
        return super().send_call(action, payload, message_id=message_id)

    def send_unconfirmed(self, action: str, payload: Any, *, message_id: str | None = None) -> str:
        self._check_broker()
        return super().send_unconfirmed(action, payload, message_id=message_id)

    def send_result(self, message_id: str, payload: Any) -> None:
        self._check_broker()
        super().send_result(message_id, payload)

    def send_error(
        self, message_id: str, error_code: str, description: str = "", details: Any = None
    ) -> None:
        self._check_broker()
        super().send_error(message_id, error_code, description, details)


def remote_session_class(transports: Any) -> type[OcppSession]:
    """The session class of fleet links for a node's ``Transports``: a
    :class:`RemoteSession` that also observes sends as the transports' own
    session class does (the benchmark's ``hop_trace``)."""
    local: type[OcppSession] = getattr(transports, "session_class", OcppSession)
    if issubclass(local, RemoteSession):
        return local
    if local is OcppSession:
        return RemoteSession
    return type(f"Remote{local.__name__}", (RemoteSession, local), {})


class FleetServer:
    """A CSMS node's stations through the fleet's broker (theory: the module's doc).

    Args:
        options: the node's server options; only ``link`` (and ``versions``,
            for the log) matter here: gateways listen.
        listener: the node.
        fleet: broker and group.
        on_broker: told ``(connected, problem)`` when the broker connection
            comes or goes (the node's status).
    """

    def __init__(
        self,
        options: ServerOptions,
        listener: StationListener,
        fleet_options: FleetOptions,
        on_broker: Callable[[bool, str], None] = lambda connected, problem: None,
        session_class: type[OcppSession] = RemoteSession,
    ) -> None:
        self.options = options
        self.listener = listener
        self.fleet = fleet_options
        self.topics = Topics(fleet_options.group)
        self.answers = self.topics.answers(fleet_options.instance)
        self.on_broker = on_broker
        self.session_class = session_class
        self.broker: Broker | None = None
        self._stations: dict[str, tuple[BrokerSocket, OcppSession, asyncio.Task[Any]]] = {}
        # connections this node asked their gateway to close: their late frames
        # and records do not open them again
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._gateways_gone: set[str] = set()
        self._auth: dict[str, str] = {}  # cbId -> what is published (a hash)
        self._auth_source: AuthList | None = None
        self._auth_task: asyncio.Task[None] | None = None
        self._subscribing: asyncio.Task[None] | None = None
        self._told_failure = ""  # the failed connection attempt last told to the node

    # -- StationServer ------------------------------------------------------------

    async def start(self) -> None:
        """Start talking to the broker (a broker not there yet is tried again and again)."""
        self.broker = Broker(
            self.fleet.broker,
            self._message,
            self._broker_up,
            self._broker_lost,
            self._broker_refused,
        )
        self.broker.start()

    async def stop(self) -> None:
        """End every link here (the stations stay connected to their gateways) and
        disconnect from the broker."""
        tasks = [task for _, _, task in self._stations.values()]
        self._stations.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for waiting in (self._auth_task, self._subscribing):
            if waiting is not None:
                waiting.cancel()
                await asyncio.wait([waiting])
        if self.broker is not None:
            broker, self.broker = self.broker, None
            await broker.stop()

    def update(self, options: ServerOptions, listener: StationListener) -> None:
        self.options = options
        self.listener = listener
        for _, session, _ in self._stations.values():
            session.listener = listener
            session.update_options(options.link)

    def connections(self) -> list[tuple[OcppSession, Admission]]:
        """The stations of the fleet; their admission was the gateways' (none here)."""
        return [(session, Admission(None, None, None)) for _, session, _ in self._stations.values()]  # type: ignore[arg-type]

    @property
    def connected(self) -> bool:
        return self.broker is not None and self.broker.connected

    # -- the auth list ------------------------------------------------------------

    def publish_auth(self, auth_list: AuthList) -> None:
        """Publish ``auth_list`` (again after each reconnect); what changed only."""
        self._auth_source = auth_list
        if self._auth_task is not None and not self._auth_task.done():
            self._auth_task.cancel()
        if self.connected:
            self._auth_task = asyncio.ensure_future(self._publish_auth(auth_list, full=False))

    async def _publish_auth(self, auth_list: AuthList, full: bool) -> None:
        broker = self.broker
        wanted: dict[str, str] = {}
        plain: list[tuple[str, str]] = []
        for cb_id in auth_list.readable():
            stored = auth_list.stored(cb_id)
            if stored is None:
                continue
            if looks_like_hash(stored):
                wanted[cb_id] = stored
            else:
                plain.append((cb_id, stored))
        # hashed in threads, a batch at a time: station logins of direct-mode nodes
        # in this engine share those threads
        for start in range(0, len(plain), HASH_BATCH):
            batch = plain[start : start + HASH_BATCH]
            wanted.update(await VERIFIER.run(_hashes_to_publish, batch, dict(self._auth)))
        if broker is None or broker is not self.broker:
            return
        for cb_id, hashed in wanted.items():
            if full or self._auth.get(cb_id) != hashed:
                broker.publish(self.topics.auth(cb_id), hashed, retain=True)
        for cb_id in set(self._auth) - set(wanted):
            broker.publish(self.topics.auth(cb_id), b"", retain=True)
        if full or set(self._auth) != set(wanted):
            # after the entries: a gateway that reads it has been sent them already
            index = json.dumps({"stations": sorted(wanted)}, separators=(",", ":"))
            broker.publish(self.topics.auth_index, index, retain=True)
        self._auth = wanted

    # -- the broker ---------------------------------------------------------------

    def _broker_up(self, session_present: bool) -> None:
        self._told_failure = ""
        self.on_broker(True, "")
        self._subscribing = asyncio.ensure_future(self._subscribe())

    async def _subscribe(self) -> None:
        broker = self.broker
        assert broker is not None
        try:
            topics = self.topics
            await broker.subscribe([topics.shared_up, self.answers])
            await broker.subscribe([topics.all_gateways, topics.all_presence, topics.all_auth])
            if self._auth_source is not None:
                self._auth_task = asyncio.ensure_future(
                    self._publish_auth(self._auth_source, full=True)
                )
        except Exception as exc:  # the connection went again: _broker_lost tells
            log.info("fleet %s: subscribing failed: %s", self.topics.group, exc)

    def _broker_lost(self, reason: str) -> None:
        self._told_failure = ""
        self.on_broker(False, reason)

    def _broker_refused(self, reason: str) -> None:
        if reason != self._told_failure:  # once per reason, not at every try
            self._told_failure = reason
            self.on_broker(False, reason)

    def _message(self, message: MQTTMessage) -> None:
        parsed = self.topics.parse(message.topic)
        if parsed is None:
            return
        kind, name = parsed
        if kind == "up":
            self._from_station(name, message)
        elif kind == "answers":
            self._answer(message)
        elif kind == "presence":
            self._presence(name, Presence.from_json(bytes(message.payload)))
        elif kind == "gateway":
            self._gateway(name, bytes(message.payload))
        elif kind == "auth":
            self._auth_on_broker(name, bytes(message.payload))

    def _from_station(self, cb_id: str, message: MQTTMessage) -> None:
        user = dict(getattr(message.properties, "UserProperty", None) or ())
        connection = user.get(fleet.CONNECTION, "")
        entry = self._stations.get(cb_id)
        if entry is None or entry[0].connection != connection:
            if connection in self._closed or not connection:
                return
            presence = Presence(
                online=True,
                gateway=user.get(fleet.GATEWAY, ""),
                connection=connection,
                since=_now(),
                version=user.get(fleet.VERSION, ""),
            )
            entry = self._open(cb_id, presence)
            if entry is None:
                return
        entry[0].feed(message.payload.decode("utf-8", "replace"))

    def _answer(self, message: MQTTMessage) -> None:
        user = dict(getattr(message.properties, "UserProperty", None) or ())
        cb_id = user.get("cbId")
        entry = self._stations.get(cb_id) if cb_id else None
        if entry is not None and entry[0].connection == user.get(fleet.CONNECTION):
            entry[0].feed(message.payload.decode("utf-8", "replace"))

    def _presence(self, cb_id: str, presence: Presence | None) -> None:
        if presence is None:
            return
        entry = self._stations.get(cb_id)
        if presence.online:
            if presence.connection in self._closed or presence.gateway in self._gateways_gone:
                return
            if entry is None or entry[0].connection != presence.connection:
                self._open(cb_id, presence)
            else:
                entry[0].presence = presence
        elif entry is not None and entry[0].connection == presence.connection:
            entry[0].end(presence.reason or f"disconnected from gateway {presence.gateway}")

    def _gateway(self, gateway_id: str, payload: bytes) -> None:
        try:
            online = bool(json.loads(payload).get("online")) if payload else False
        except (ValueError, AttributeError):
            return
        if online:
            self._gateways_gone.discard(gateway_id)
            return
        self._gateways_gone.add(gateway_id)
        for socket, _, _ in list(self._stations.values()):
            if socket.presence.gateway == gateway_id:
                socket.end(f"its gateway {gateway_id} is gone")

    def _auth_on_broker(self, cb_id: str, payload: bytes) -> None:
        broker = self.broker
        if not payload or broker is None or self._auth_source is None:
            return
        if cb_id not in self._auth_source and cb_id not in self._auth:
            broker.publish(self.topics.auth(cb_id), b"", retain=True)  # not in our list

    # -- links --------------------------------------------------------------------

    def _open(
        self, cb_id: str, presence: Presence
    ) -> tuple[BrokerSocket, OcppSession, asyncio.Task[Any]] | None:
        version: OcppVersion | None = VERSIONS.get(presence.version.removeprefix("ocpp"))
        if version is None:
            version = next(
                (v for v in VERSIONS.values() if v.subprotocol == presence.version), None
            )
        if version is None:
            log.warning("%s: unknown OCPP version %r from the fleet", cb_id, presence.version)
            return None
        previous = self._stations.get(cb_id)
        socket = BrokerSocket(self, cb_id, presence)
        remote = presence.remote or f"gateway {presence.gateway}"
        session = self.session_class(
            cb_id, version, Role.CSMS, socket, self.listener, self.options.link, remote
        )
        task = asyncio.ensure_future(self._run(cb_id, socket, session))
        if previous is not None:
            # The new link opens first, as in direct mode: the node then closes the
            # previous one as replaced (no OFFLINE between them); ended here after
            # that in any case.
            previous[0].superseded = True
            asyncio.get_running_loop().call_soon(previous[0].end, "replaced by a newer connection")
        entry = (socket, session, task)
        self._stations[cb_id] = entry
        return entry

    async def _run(self, cb_id: str, socket: BrokerSocket, session: OcppSession) -> None:
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("station %s: fleet link failed", cb_id)
        finally:
            socket.end("ended")
            entry = self._stations.get(cb_id)
            if entry is not None and entry[0] is socket:
                del self._stations[cb_id]

    def closed_here(self, connection: str) -> None:
        self._closed[connection] = None
        if len(self._closed) > CLOSED_KEPT:
            self._closed.popitem(last=False)

    def send_down(self, socket: BrokerSocket, text: str) -> None:
        """Publish a frame of ours to the station (rule 3)."""
        broker = self.broker
        if broker is None:
            raise OutgoingError("the fleet's broker is not started")
        message_id = frame_message_id(text)
        user = [(fleet.CONNECTION, socket.connection)]
        if text.startswith("[2,"):
            properties = publish_properties(
                response_topic=self.answers,
                correlation=message_id,
                expiry=self.options.link.call_timeout,
                user=user,
            )
        else:
            properties = publish_properties(correlation=message_id, user=user)
        if not broker.publish(
            socket.down, text, properties=properties, unheard=lambda why: self._unheld(socket)
        ):
            raise OutgoingError(f"the fleet's broker is unreachable ({broker.problem})")

    def _unheld(self, socket: BrokerSocket) -> None:
        """No gateway subscribes to the station's topic: it is connected nowhere."""
        socket.end(f"no gateway holds {socket.cb_id} any more")

    def request_close(self, socket: BrokerSocket, code: int, reason: str) -> None:
        """Ask the gateway holding the station to close its websocket (rule 4)."""
        broker = self.broker
        if broker is None:
            return
        properties = publish_properties(
            user=[(fleet.CONTROL, "close"), (fleet.CONNECTION, socket.connection)]
        )
        payload = json.dumps({"code": code, "reason": reason})
        broker.publish(socket.down, payload, properties=properties)


def _hashes_to_publish(plain: list[tuple[str, str]], published: dict[str, str]) -> dict[str, str]:
    """cbId -> the hash to publish of each plain password: the one published
    before when it still matches (no new salt, no new message), else a new one."""
    hashes = {}
    for cb_id, password in plain:
        kept = published.get(cb_id)
        if kept is not None:
            try:
                if verify(password, parse_hash(kept)):
                    hashes[cb_id] = kept
                    continue
            except ValueError:
                pass
        hashes[cb_id] = make_hash(password, "pbkdf2-sha256", cost=PUBLISHED_PBKDF2_ROUNDS)
    return hashes


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
