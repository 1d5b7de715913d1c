"""Shared fixtures: the real daemon behind a shim double, its nodes and their peers,
and a real Node-RED runtime with the checkout's shim (see tests/nodered.py).

- ``shim``: one daemon for the whole module; every test makes its own nodes
  (``make_csms``, ``make_cs``: unique ids, closed after the test). It and the
  factories run on the module's event loop: a module that uses them has
  ``pytestmark = pytest.mark.asyncio(loop_scope="module")``.
- ``fresh_shim``: a daemon of the test's own, on the test's own loop, for
  tests that use fixed node ids or read everything the daemon ever said.
- ``mosquitto``, ``make_haproxy``: fleet mode's broker and load balancer
  (tests/fleetkit.py), real processes of the test's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.common import (
    DaemonCs,
    DaemonCsms,
    FakeCsms,
    MakeCs,
    MakeCsms,
    MakeFakeCsms,
    next_number,
    start_csms,
)
from tests.fleetkit import (
    HAProxy,
    MakeHAProxy,
    Mosquitto,
    running_haproxy,
    running_mosquitto,
)
from tests.nodered import NodeRed, node_red_missing_reason, running_node_red
from tests.shim_double import ShimDouble


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = node_red_missing_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("nodered") is not None:
            item.add_marker(skip)


@pytest.fixture
def nodered(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NodeRed]:
    """A started Node-RED (empty flows) on a free loopback port; stopped after the test.

    Teardown fails the test when an `ocpp_nodes serve` daemon of this run is
    still alive after Node-RED stopped.
    """
    with running_node_red(tmp_path / "node-red", request.node.name) as runtime:
        yield runtime


# -- fleet mode's broker and load balancer ---------------------------------------------


@pytest.fixture
def mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    """A started Mosquitto (MQTT 5, user and password, persistence) on a free loopback
    port; stopped after the test. Skips when mosquitto is not installed."""
    with running_mosquitto(tmp_path / "mosquitto", request.node.name) as broker:
        yield broker


@pytest.fixture
def make_haproxy(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeHAProxy]:
    """Factory of started HAProxys (TCP, in front of the given backend ports) on free
    loopback ports; all stopped after the test. Skips when haproxy is not installed."""
    made: list[HAProxy] = []
    with ExitStack() as stack:

        def make(backends: Sequence[int]) -> HAProxy:
            number = len(made)
            made.append(
                stack.enter_context(
                    running_haproxy(
                        tmp_path / f"haproxy{number}", backends, f"{request.node.name}.{number}"
                    )
                )
            )
            return made[-1]

        yield make


# -- the daemon ----------------------------------------------------------------------


async def _started_shim() -> ShimDouble:
    double = ShimDouble()
    await double.start()
    return double


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shim() -> AsyncIterator[ShimDouble]:
    """The daemon of the module, started as the shim starts it."""
    double = await _started_shim()
    yield double
    await double.stop()


@pytest_asyncio.fixture
async def fresh_shim() -> AsyncIterator[ShimDouble]:
    """A daemon of the test's own: nothing recorded before, no node of another test."""
    double = await _started_shim()
    yield double
    await double.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def make_csms(shim: ShimDouble) -> AsyncIterator[MakeCsms]:
    """Factory of CSMS nodes (path ``/ocpp``; Basic auth ``auths``, by default CP1 with
    password ``pw``; other keywords are node config); all closed after the test."""
    made: list[str] = []

    async def make(auths: dict[str, str] | None = None, **config: Any) -> DaemonCsms:
        node = f"csms{next_number()}"
        made.append(node)
        port = await start_csms(shim, node, auths or {"CP1": "pw"}, config)
        return DaemonCsms(shim, node, port)

    yield make
    for node in made:
        await shim.close_node(node)


@pytest_asyncio.fixture(loop_scope="module")
async def make_cs(shim: ShimDouble) -> AsyncIterator[MakeCs]:
    """Factory of CS nodes for a CSMS at ``url`` (auto connect, 0.2 s retry, 1 s message
    timeout; other keywords are node config); all closed after the test."""
    made: list[str] = []

    async def make(
        url: str, cb_id: str = "CP1", password: str | None = "pw", **config: Any
    ) -> DaemonCs:
        node = f"cs{next_number()}"
        shim.create(
            node,
            "CS",
            {
                "cbId": cb_id,
                "auto_connect": True,
                "ws_rt_minimum": 0.2,
                "ws_rt_repeat": 0,
                "ws_rt_rnd_range": 0,
                "message_timeout": 1,
                **config,
            },
            credentials={"csms_pw": password} if password is not None else {},
            target={"url": url},
        )
        made.append(node)
        return DaemonCs(shim, node)

    yield make
    for node in made:
        await shim.close_node(node)


@pytest_asyncio.fixture(loop_scope="module")
async def make_fake_csms() -> AsyncIterator[MakeFakeCsms]:
    """Factory of fake CSMSs (websockets servers, options as ``serve``'s); stopped after."""
    made: list[FakeCsms] = []

    async def make(**serve_options: Any) -> FakeCsms:
        fake = await FakeCsms(**serve_options).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        await fake.stop()
