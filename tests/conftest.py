"""Shared fixtures: a real Node-RED runtime with the checkout's shim (see tests/nodered.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodered import NodeRed, free_port, node_red_missing_reason, running_node_red

__all__ = ["free_port"]


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


@pytest.fixture(name="free_port")
def free_port_fixture() -> Iterator[int]:
    yield free_port()
