"""One MQTT 5 connection to the fleet's broker, kept up: paho-mqtt on the event loop.

paho-mqtt (2.x) speaks MQTT; this module gives it its bytes from the asyncio
loop and reconnects after a loss with a back-off of 1, 2, 4 ... 30 s. The
connection (TCP, and TLS when configured) is an asyncio transport; paho reads
and writes it through :class:`TransportSocket`, a socket-shaped pair of
buffers, as it reads a non-blocking socket in paho's own asyncio example
(``loop_read`` when bytes came, ``loop_write`` when it has some to send,
``loop_misc`` once a second for keep-alive). So paho's callbacks run on the
loop, and its packets cost no system call each: the transport reads what
came at once, and what paho wrote in one turn of the loop goes out in one
write.

:meth:`Broker.publish` is not a coroutine: it hands the message to paho and
returns whether it could (``False`` while there is no connection: nothing is
queued for later). Fleet code answers a station or a flow at once instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from . import paho_speedups
from .topics import QOS

__all__ = ["Broker", "BrokerOptions", "BrokerUnreachable", "broker_address", "publish_properties"]

log = logging.getLogger(__name__)

#: waits between connection attempts, then the last one again
RECONNECT_WAITS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

#: MQTT 5 PUBACK reason code: the broker took the message, nobody subscribes to it
NO_MATCHING_SUBSCRIBERS = 16

#: topics per SUBSCRIBE packet when many are (re)subscribed at once
SUBSCRIBE_BATCH = 200

#: how long :meth:`Broker.stop` waits for the broker to acknowledge what was published
STOP_FLUSH_SECONDS = 5.0

#: how long opening the connection (TCP, TLS) may take
CONNECT_TIMEOUT_SECONDS = 10.0


class BrokerUnreachable(Exception):
    """There is no connection to the broker now."""


def broker_address(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of ``mqtt://host[:1883]`` or ``mqtts://host[:8883]``.

    Raises ``ValueError`` saying what is wrong (never quoting a password in the URL).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(
            f"broker URL must start with mqtt:// or mqtts://, not {parts.scheme or 'nothing'}"
        )
    if parts.username or parts.password:
        raise ValueError("put the broker's user and password in the credentials, not the URL")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError("the broker URL's port is not a number") from None
    if not parts.hostname:
        raise ValueError("the broker URL names no host")
    return parts.hostname, port, tls


@dataclass(frozen=True)
class BrokerOptions:
    """How to reach the broker. ``password`` never appears in ``repr``.

    ``session_expiry``: seconds the broker keeps our subscriptions and queued
    QoS 1 messages after we are gone (0: a clean session each time).
    ``will``: ``(topic, payload)`` the broker publishes (retained) when we
    vanish without a DISCONNECT.
    """

    url: str
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    session_expiry: int = 0
    keepalive: int = 30
    will: tuple[str, bytes] | None = None


def publish_properties(
    *,
    response_topic: str | None = None,
    correlation: str | None = None,
    expiry: float | None = None,
    user: Iterable[tuple[str, str]] = (),
) -> Properties:
    """MQTT 5 PUBLISH properties."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        properties.ResponseTopic = response_topic
    if correlation is not None:
        properties.CorrelationData = correlation.encode()
    if expiry is not None:
        properties.MessageExpiryInterval = max(1, int(expiry + 0.999))
    user = list(user)
    if user:
        properties.UserProperty = user
    return properties


class TransportSocket(asyncio.Protocol):
    """The socket paho reads and writes: the two buffers of an asyncio transport.

    paho reads a packet in three or more ``recv`` calls (its first byte, its
    length, the rest) and writes each packet with a ``send``; on a real socket
    each is a system call. Here ``recv`` takes from what the transport has
    received, and ``send`` adds to what goes out in one ``write`` at the end
    of the loop's turn (or at once, :meth:`flush`). ``recv`` raises
    ``BlockingIOError`` when nothing is left, as a non-blocking socket does,
    and returns ``b""`` once the connection is gone.

    ``on_received`` is called on the loop when bytes came or the connection ended.
    """

    def __init__(self, on_received: Callable[[], None]) -> None:
        self._on_received = on_received
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._received = b""
        self._read = 0  # of _received
        self._outgoing: list[bytes] = []
        self._flush_soon: asyncio.Handle | None = None
        self.ended = False

    # -- asyncio's side ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._read < len(self._received):
            self._received = self._received[self._read :] + data
        else:
            self._received = data
        self._read = 0
        self._on_received()

    def eof_received(self) -> bool:
        return False  # close: the broker ended the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._outgoing.clear()
        self._on_received()  # paho reads b"": the connection is lost

    # -- paho's side -------------------------------------------------------------

    @property
    def unread(self) -> bool:
        return self._read < len(self._received)

    def recv(self, buffer_size: int) -> bytes:
        start = self._read
        if start >= len(self._received):
            if self.ended:
                return b""
            raise BlockingIOError
        self._read = start + buffer_size
        return self._received[start : start + buffer_size]

    def send(self, buffer: bytes | bytearray) -> int:
        if self.ended:
            raise ConnectionResetError("the connection to the broker is closed")
        self._outgoing.append(bytes(buffer))
        if self._flush_soon is None:
            self._flush_soon = self._loop.call_soon(self.flush)
        return len(buffer)

    def flush(self) -> None:
        """Write what paho sent so far, in one write."""
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        outgoing = self._outgoing
        if outgoing and self.transport is not None and not self.ended:
            self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))
        outgoing.clear()

    def setblocking(self, flag: bool) -> None:
        """paho's socket calls: it is never blocking."""

    def fileno(self) -> int:
        sock = self.get_extra_info("socket")
        return sock.fileno() if sock is not None else -1

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def get_extra_info(self, name: str) -> Any:
        """The transport's (``"socket"``, ``"ssl_object"`` ...)."""
        return self.transport.get_extra_info(name) if self.transport is not None else None


class Broker:
    """A connection to the broker that comes back by itself.

    Args:
        options: where and who.
        on_message: called on the loop with each paho ``MQTTMessage``.
        on_connected: called on the loop after each CONNACK, with whether the
            broker still had our session; subscribe here.
        on_lost: called on the loop when a connection ends, with why.
        on_failed: called on the loop when an attempt to connect failed, with
            why (the broker refused the login, nothing listens ...).
    """

    def __init__(
        self,
        options: BrokerOptions,
        on_message: Callable[[mqtt.MQTTMessage], None],
        on_connected: Callable[[bool], None] = lambda session_present: None,
        on_lost: Callable[[str], None] = lambda reason: None,
        on_failed: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.options = options
        self.host, self.port, self._tls = broker_address(options.url)
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._on_failed = on_failed
        self._connections = 0  # CONNACKs so far
        self.connected = False
        #: why the last attempt or connection failed ("" while connected)
        self.problem = "not connected yet"
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        self._socket: TransportSocket | None = None
        self._write_soon = False
        self._misc: asyncio.TimerHandle | None = None
        self._runner: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._up = asyncio.Event()
        self._acks: dict[int, asyncio.Future[Any]] = {}
        #: QoS 1 messages handed to paho and not acknowledged by the broker yet
        self._unacked: set[int] = set()
        #: publishes whose sender wants to know if nobody got them: mid -> callback
        self._unheard: dict[int, Callable[[str], None]] = {}
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._stopping = False

    def _make_client(self) -> mqtt.Client:
        paho_speedups.install()
        options = self.options
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=mqtt.MQTTv5,
        )
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        if options.tls is not None and not self._tls:
            raise ValueError("a TLS configuration needs an mqtts:// broker URL")
        if options.will is not None:
            topic, payload = options.will
            client.will_set(topic, payload, qos=QOS, retain=True)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.on_publish = self._published
        client.on_subscribe = self._acked
        client.on_unsubscribe = self._acked
        client.on_socket_close = self._socket_closed
        client.on_socket_register_write = self._want_write
        # paho's own log lines go to the logging module (never with a password)
        client.enable_logger(log)
        return client

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        """Connect, and keep connecting after every loss, until :meth:`stop`."""
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected; False when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Disconnect cleanly (the broker does not publish our will) and stop.

        What was published is sent first: paho holds back QoS 1 messages beyond
        the broker's receive maximum (Mosquitto: 20) until earlier ones are
        acknowledged, and a DISCONNECT before them would drop them (a gateway's
        last presence records). Waits at most :data:`STOP_FLUSH_SECONDS`.
        """
        self._stopping = True
        if self.connected and not self._all_acked.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_acked.wait(), STOP_FLUSH_SECONDS)
        if self.connected:
            self._client.disconnect()
            self._flush_writes()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])
        self._close_socket()
        for future in self._acks.values():
            if not future.done():
                future.set_exception(BrokerUnreachable("the broker connection was stopped"))
        self._acks.clear()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._lost.clear()
            connections = self._connections
            try:
                await self._connect()
            except asyncio.TimeoutError:
                self.problem = (
                    f"cannot reach the broker at {self.options.url}: no connection "
                    f"within {CONNECT_TIMEOUT_SECONDS:g} s"
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.problem = f"cannot reach the broker at {self.options.url}: {exc}"
            else:
                await self._lost.wait()
            if self._stopping:
                return
            if self._connections > connections:
                failures = 0  # it was up: the back-off starts again
            else:
                try:
                    self._on_failed(self.problem)
                except Exception:
                    log.exception("handling a failed broker connection failed")
            wait = RECONNECT_WAITS[min(failures, len(RECONNECT_WAITS) - 1)]
            failures += 1
            log.info("%s; trying again in %g s", self.problem, wait)
            await asyncio.sleep(wait)

    async def _connect(self) -> None:
        options = self.options
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = options.session_expiry
        context = (options.tls or ssl.create_default_context()) if self._tls else None
        _, sock = await asyncio.wait_for(
            self._loop.create_connection(
                lambda: TransportSocket(self._readable),
                self.host,
                self.port,
                ssl=context,
                server_hostname=self.host if context is not None else None,
            ),
            CONNECT_TIMEOUT_SECONDS,
        )
        self._socket = sock
        client = self._client
        # paho's connect opens its socket with _create_socket: here it takes
        # the connection just opened (asyncio sets TCP_NODELAY on it: with
        # Nagle, a small PUBLISH or PUBACK written while an earlier one is
        # unacknowledged waits for the broker's delayed ACK), and only writes
        # CONNECT
        client._create_socket = lambda: sock  # type: ignore[method-assign]
        try:
            client.connect(
                self.host,
                self.port,
                options.keepalive,
                clean_start=options.session_expiry == 0,
                properties=properties,
            )
        except BaseException:
            self._close_socket()
            raise
        self._misc = self._loop.call_later(1.0, self._keep_alive)

    def _close_socket(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    # -- paho's socket, driven by the loop -------------------------------------

    def _readable(self) -> None:
        """Bytes came (or the connection ended): paho reads all of them."""
        client, sock = self._client, self._socket
        if sock is None:
            return
        client.loop_read()
        # paho reads at most as many packets per call as it has messages in flight
        while sock.unread and self._socket is sock:
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                break

    def _want_write(self, client: Any, userdata: Any, sock: Any) -> None:
        """paho has packets to send: it sends them at the end of this turn of the loop."""
        if sock is self._socket and sock is not None and not self._write_soon:
            self._write_soon = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_soon = False
        sock = self._socket
        if sock is not None:
            self._client.loop_write()
            sock.flush()

    def _flush_writes(self) -> None:
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(Exception):
                self._client.loop_write()
            sock.flush()

    def _keep_alive(self) -> None:
        self._misc = None
        if self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS and self._socket is not None:
            self._misc = self._loop.call_later(1.0, self._keep_alive)

    def _socket_closed(self, client: Any, userdata: Any, socket: Any) -> None:
        if self.connected:
            self.problem = f"lost the connection to the broker at {self.options.url}"
        self._close_socket()
        self._went(self.problem)

    # -- paho's callbacks --------------------------------------------------------

    def _connected(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.problem = f"the broker at {self.options.url} refused the connection: {reason}"
            return  # paho closes the socket: _socket_closed
        # paho 2.x ignores the broker's Receive Maximum (MQTT 5, 3.2.2.3.3: how
        # many QoS 1 messages it takes unacknowledged; 65,535 when absent) and
        # keeps its own 20 in flight: a fleet's every message then waits for the
        # PUBACKs of the 20 before it, about 20 per turn of the event loop
        client._max_inflight_messages = getattr(properties, "ReceiveMaximum", 65535)
        self.connected = True
        self._connections += 1
        self.problem = ""
        self._up.set()
        try:
            self._on_connected(bool(flags.session_present))
        except Exception:
            log.exception("handling the broker connection failed")

    def _disconnected(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.connected or self.problem.startswith("lost"):
            self.problem = f"lost the connection to the broker at {self.options.url}: {reason}"
        self._went(self.problem)

    def _went(self, reason: str) -> None:
        was_connected = self.connected
        self.connected = False
        self._up.clear()
        self._lost.set()
        for future in self._acks.values():
            if not future.done():
                future.set_exception(BrokerUnreachable(reason))
        self._acks.clear()
        self._unacked.clear()
        self._unheard.clear()  # their senders hear of the loss itself (on_lost)
        self._all_acked.set()
        if was_connected and not self._stopping:
            try:
                self._on_lost(reason)
            except Exception:
                log.exception("handling the broker's loss failed")

    def _message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(message)
        except Exception:  # one bad message must not end the connection
            log.exception("handling a message on %s failed", message.topic)

    def _published(
        self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._unacked.discard(mid)
        if not self._unacked:
            self._all_acked.set()
        unheard = self._unheard.pop(mid, None)
        if unheard is not None and (reason.value == NO_MATCHING_SUBSCRIBERS or reason.is_failure):
            try:
                unheard(str(reason))
            except Exception:
                log.exception("handling an unheard message failed")

    def _acked(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reasons)

    # -- publish and subscribe ---------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        unheard: Callable[[str], None] | None = None,
    ) -> bool:
        """Hand a QoS 1 message to paho; False (nothing sent, nothing kept) when offline.

        ``unheard`` is called (with the broker's reason) when the broker's
        acknowledgement says that nobody subscribes to the topic (MQTT 5 reason
        code 16) or that it refused the message.
        """
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=QOS, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        if not info.is_published():
            self._unacked.add(info.mid)
            self._all_acked.clear()
            if unheard is not None:
                self._unheard[info.mid] = unheard
        return True

    async def subscribe(self, topics: Iterable[str], *, no_local: bool = False) -> None:
        """Subscribe (QoS 1) and wait for the broker's SUBACKs.

        Raises:
            BrokerUnreachable: not connected, or lost before the acknowledgement.
        """
        options = SubscribeOptions(qos=QOS, noLocal=no_local)
        await self._batched([(topic, options) for topic in topics], self._client.subscribe)

    async def unsubscribe(self, topics: Iterable[str]) -> None:
        """Unsubscribe and wait for the UNSUBACKs (raises :class:`BrokerUnreachable`)."""
        await self._batched(list(topics), self._client.unsubscribe)

    async def _batched(
        self, items: list[Any], send: Callable[[Any], tuple[int, int | None]]
    ) -> None:
        waits = []
        for start in range(0, len(items), SUBSCRIBE_BATCH):
            if not self.connected:
                raise BrokerUnreachable(self.problem or "not connected to the broker")
            rc, mid = send(items[start : start + SUBSCRIBE_BATCH])
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                raise BrokerUnreachable(
                    f"the broker connection refused it: {mqtt.error_string(rc)}"
                )
            future = self._loop.create_future()
            self._acks[mid] = future
            waits.append(future)
        for future in waits:
            await future
