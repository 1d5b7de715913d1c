"""Faster name lookups in paho-mqtt's MQTT 5 ``Properties``, and no scan of every
message in flight on each acknowledgement (the same results).

paho-mqtt 2.x builds its tables of property names and types again for every
``Properties`` object, and finds a property's identifier by scanning the 27
names with ``str.replace`` for each lookup, several times per attribute set,
packed or unpacked. With the four properties of a fleet CALL (response topic,
correlation data, expiry, a user property) that is about 40 µs to make and
pack them and 50 µs to unpack them per message, on every message in and out
of the engine and the gateways (docs/benchmarks.md, *Fleet*).

:func:`install` replaces those lookups on the ``Properties`` class with
dictionaries made once from paho's own tables: construction, attribute
checks, ``pack``, ``unpack``, ``clear`` and ``isEmpty``. What is checked, what
is raised and the bytes on the wire stay paho's (tests/test_fleet_broker.py
compares them with paho's own code). And ``Client._update_inflight``, which
paho calls on every PUBACK to send a message queued behind the broker's
Receive Maximum, scanned every message in flight to find none; it now
returns at once when none can be queued. It is installed when fleet mode is
first used, once per process, and only on the paho-mqtt versions it was
written against (2.x, whose ``Properties`` has these methods); anything else
is left as it is.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.client import MQTT_ERR_SUCCESS, Client
from paho.mqtt.exception import MQTTException
from paho.mqtt.properties import (
    Properties,
    VariableByteIntegers,
    readBytes,
    readInt16,
    readInt32,
    readUTF,
    writeBytes,
    writeInt16,
    writeInt32,
    writeUTF,
)

__all__ = ["install", "installed"]

_ORIGINAL_INIT = Properties.__init__
_PATCHED = ("__init__", "__setattr__", "getIdentFromName", "getNameFromIdent",
            "allowsMultiple", "pack", "unpack", "clear", "isEmpty")  # fmt: skip
installed = False

# paho's own tables, made once
_probe: Any = object.__new__(Properties)
_ORIGINAL_INIT(_probe, 3)  # any packet type: the tables do not depend on it
_TYPES: list[str] = _probe.types
_NAMES: dict[str, int] = _probe.names
_KINDS: dict[int, tuple[int, list[int]]] = _probe.properties
_IDENT = {name.replace(" ", ""): ident for name, ident in _NAMES.items()}
_NAME = {ident: name for name, ident in _NAMES.items()}
_ORDER = [(name.replace(" ", ""), ident) for name, ident in _NAMES.items()]
_MULTIPLE = frozenset({11, 38})  # Subscription Identifier, User Property
_PRIVATE = frozenset({"packetType", "types", "names", "properties"})
(_BYTE, _INT16, _INT32, _VARINT, _BINARY, _UTF8, _PAIR) = (
    _TYPES.index(kind)
    for kind in (
        "Byte",
        "Two Byte Integer",
        "Four Byte Integer",
        "Variable Byte Integer",
        "Binary Data",
        "UTF-8 Encoded String",
        "UTF-8 String Pair",
    )
)
_RANGES = {
    "ReceiveMaximum": (1, 65535),
    "TopicAlias": (1, 65535),
    "TopicAliasMaximum": (0, 65535),
    "MaximumPacketSize": (1, 268435455),
    "SubscriptionIdentifier": (1, 268435455),
}
_FLAGS = frozenset({"RequestResponseInformation", "RequestProblemInformation",
                    "PayloadFormatIndicator"})  # fmt: skip


def _init(self: Any, packetType: int) -> None:
    set_ = object.__setattr__
    set_(self, "packetType", packetType)
    set_(self, "types", _TYPES)
    set_(self, "names", _NAMES)
    set_(self, "properties", _KINDS)


def _setattr(self: Any, name: str, value: Any) -> None:
    name = name.replace(" ", "")
    if name in _PRIVATE:
        object.__setattr__(self, name, value)
        return
    ident = _IDENT.get(name)
    if ident is None:
        raise MQTTException(f"Property name must be one of {_NAMES.keys()}")
    if self.packetType not in _KINDS[ident][1]:
        from paho.mqtt.packettypes import PacketTypes

        raise MQTTException(
            f"Property {name} does not apply to packet type {PacketTypes.Names[self.packetType]}"
        )
    if not isinstance(value, list):
        bounds = _RANGES.get(name)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise MQTTException(
                f"{name} property value must be in the range {bounds[0]}-{bounds[1]}"
            )
        if name in _FLAGS and value != 0 and value != 1:
            raise MQTTException(f"{name} property value must be 0 or 1")
    if ident in _MULTIPLE:
        if not isinstance(value, list):
            value = [value]
        present = self.__dict__.get(name)
        if present is not None:
            value = present + value
    object.__setattr__(self, name, value)


def _ident_from_name(self: Any, compressedName: str) -> int:
    return _IDENT.get(compressedName, -1)


def _name_from_ident(self: Any, identifier: int) -> str | None:
    return _NAME.get(identifier)


def _allows_multiple(self: Any, compressedName: str) -> bool:
    return _IDENT.get(compressedName, -1) in _MULTIPLE


def _write(identifier: int, kind: int, value: Any) -> bytes:
    head = VariableByteIntegers.encode(identifier)
    if kind == _UTF8:
        return head + writeUTF(value)
    if kind == _BINARY:
        return head + writeBytes(value)
    if kind == _INT32:
        return head + writeInt32(value)
    if kind == _PAIR:
        return head + writeUTF(value[0]) + writeUTF(value[1])
    if kind == _BYTE:
        return head + bytes([value])
    if kind == _INT16:
        return head + writeInt16(value)
    if kind == _VARINT:
        return head + VariableByteIntegers.encode(value)
    return head


def _pack(self: Any) -> bytes:
    present = self.__dict__
    parts: list[bytes] = []
    for name, ident in _ORDER:
        if name in present:
            kind = _KINDS[ident][0]
            if ident in _MULTIPLE:
                parts.extend(_write(ident, kind, item) for item in present[name])
            else:
                parts.append(_write(ident, kind, present[name]))
    buffer = b"".join(parts)
    return bytes(VariableByteIntegers.encode(len(buffer))) + buffer


def _read(buffer: Any, kind: int, left: int) -> tuple[Any, int]:
    if kind == _UTF8:
        return readUTF(buffer, left)
    if kind == _BINARY:
        return readBytes(buffer, left)
    if kind == _INT32:
        return readInt32(buffer), 4
    if kind == _PAIR:
        first, used = readUTF(buffer, left)
        second, used2 = readUTF(buffer[used:], left - used)
        return (first, second), used + used2
    if kind == _BYTE:
        return buffer[0], 1
    if kind == _INT16:
        return readInt16(buffer), 2
    value, used = VariableByteIntegers.decode(buffer)
    return value, used


def _unpack(self: Any, buffer: Any) -> tuple[Any, int]:
    _clear(self)
    propslen, vbilen = VariableByteIntegers.decode(buffer)
    buffer = buffer[vbilen:]
    left = propslen
    present = self.__dict__
    while left > 0:
        identifier, used = VariableByteIntegers.decode(buffer)
        buffer = buffer[used:]
        left -= used
        kind = _KINDS[identifier][0]
        value, used = _read(buffer, kind, left)
        buffer = buffer[used:]
        left -= used
        name = _NAME[identifier].replace(" ", "")
        if identifier not in _MULTIPLE and name in present:
            raise MQTTException(f"Property '{name}' must not exist more than once")
        _setattr(self, name, value)
    return self, propslen + vbilen


def _clear(self: Any) -> None:
    present = self.__dict__
    for name, _ in _ORDER:
        present.pop(name, None)


def _is_empty(self: Any) -> bool:
    present = self.__dict__
    return not any(name in present for name, _ in _ORDER)


_ORIGINAL_UPDATE_INFLIGHT = Client._update_inflight


def _update_inflight(self: Any) -> Any:
    # paho scans every unacknowledged message on each PUBACK for one queued
    # behind the in-flight window: O(n) per acknowledgement. Each message of
    # QoS 1 or 2 is either in flight or queued, so when there are no more of
    # them than in flight, none is queued and there is nothing to send.
    if len(self._out_messages) <= self._inflight_messages:
        return MQTT_ERR_SUCCESS
    return _ORIGINAL_UPDATE_INFLIGHT(self)


def install() -> bool:
    """Put the faster lookups on paho's ``Properties`` (once); False when this paho
    is not one they were written for (then nothing is changed)."""
    global installed
    if installed:
        return True
    if not all(callable(getattr(Properties, name, None)) for name in _PATCHED):
        return False
    if not callable(getattr(Client, "_update_inflight", None)):
        return False
    Properties.__init__ = _init  # type: ignore[method-assign]
    Properties.__setattr__ = _setattr  # type: ignore[method-assign]
    Properties.getIdentFromName = _ident_from_name  # type: ignore[method-assign]
    Properties.getNameFromIdent = _name_from_ident  # type: ignore[method-assign]
    Properties.allowsMultiple = _allows_multiple  # type: ignore[method-assign]
    Properties.pack = _pack  # type: ignore[method-assign]
    Properties.unpack = _unpack  # type: ignore[method-assign]
    Properties.clear = _clear  # type: ignore[method-assign]
    Properties.isEmpty = _is_empty  # type: ignore[method-assign]
    Client._update_inflight = _update_inflight  # type: ignore[method-assign]
    installed = True
    return True
