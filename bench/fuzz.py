"""The properties of tests/test_fuzz.py for many more inputs.

    .venv/bin/python bench/fuzz.py --examples 100000

splits --examples over the six properties (parse on text, bytes and
JSON-ish / frame-shaped input; OcppConnection.receive_text on sequences of
messages; FrameDecoder.feed on arbitrary chunks and on cut frames with
garbage) and prints, per property, the inputs tried and the time taken.
Exits non-zero at the first input that breaks a property (hypothesis prints
the shrunk example). Results go in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ocpp_nodes.rpc.roles import Role  # noqa: E402
from tests.test_fuzz import (  # noqa: E402
    byte_streams,
    check_connection,
    check_decoder,
    check_parse,
    peer_messages,
)

PROPERTIES: list[tuple[str, Any, Callable[..., None]]] = [
    ("parse(text)", st.text(), check_parse),
    ("parse(bytes)", st.binary(), check_parse),
    ("parse(json-ish, frame-shaped, truncated)", peer_messages, check_parse),
    (
        "OcppConnection.receive_text(sequence of 0-8 messages)",
        st.tuples(
            st.lists(peer_messages, max_size=8),
            st.sampled_from([Role.CSMS, Role.CHARGING_STATION]),
        ),
        lambda args: check_connection(*args),
    ),
    (
        "FrameDecoder.feed(arbitrary chunks)",
        st.lists(st.binary(max_size=64), max_size=8),
        check_decoder,
    ),  # fmt: skip
    ("FrameDecoder.feed(cut frames + garbage)", byte_streams(), check_decoder),
]


def counting(check: Callable[..., None], calls: list[int]) -> Callable[[Any], None]:
    def run(value: Any) -> None:
        calls[0] += 1
        check(value)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--examples", type=int, default=100_000, help="total inputs (all properties)"
    )
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default random)")
    args = parser.parse_args()
    each = max(1, -(-args.examples // len(PROPERTIES)))  # at least --examples in total
    total_inputs = 0
    started = time.monotonic()
    print(f"{'property':58} {'inputs':>9} {'seconds':>8}")
    for name, strategy, check in PROPERTIES:
        calls = [0]
        run = counting(check, calls)
        test = settings(
            max_examples=each,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )(given(strategy)(run))
        if args.seed is not None:
            from hypothesis import seed

            test = seed(args.seed)(test)
        t0 = time.monotonic()
        test()
        total_inputs += calls[0]
        print(f"{name:58} {calls[0]:>9} {time.monotonic() - t0:>8.1f}", flush=True)
    print(f"{'total':58} {total_inputs:>9} {time.monotonic() - started:>8.1f}")
    print("no property broken")
    return 0


if __name__ == "__main__":
    sys.exit(main())
