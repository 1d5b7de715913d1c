"""Writes docs/benchmarks.md and docs/benchmarks.png from bench/run.py's results.

The hand-written parts (what the numbers mean, the next levers) live in
bench/notes.md and are copied in verbatim, so a new run keeps them.
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DOC = REPO / "docs" / "benchmarks.md"
PNG = REPO / "docs" / "benchmarks.png"
NOTES = BENCH / "notes.md"
LABEL = {"ours": "ocpp-nodes", "old": "old package", "null": "null server"}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (action, N, system): the medians over its repeated runs.

    Round trips/s, each latency percentile and each CPU % are medians; RSS is
    the largest seen; connections failed and lost are summed. ``runs_rps``
    keeps every run's round trips/s; ``rep`` pairs runs made back to back.
    """
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["action"], r["n"], r["system"]), []).append(r)
    rows = []
    for group in groups.values():
        row = dict(group[0])
        row["runs_rps"] = [r["rps"] for r in group]
        row["rps"] = median([r["rps"] for r in group])
        row["latency_ms"] = {
            k: median([r["latency_ms"][k] for r in group if r["latency_ms"].get(k) is not None])
            for k in group[0]["latency_ms"]
        }
        row["connected"] = min(r["connected"] for r in group)
        row["failed"] = sum(r["failed"] for r in group)
        row["lost"] = sum(r["lost"] for r in group)
        resources: dict[str, dict[str, Any]] = {}
        for proc in group[0].get("resources") or {}:
            cpu = [_res(r, proc, "cpu_pct") for r in group]
            rss = [_res(r, proc, "rss_max_mib") for r in group]
            resources[proc] = {
                "cpu_pct": median([c for c in cpu if c is not None]),
                "rss_max_mib": max((x for x in rss if x is not None), default=None),
            }
        row["resources"] = resources
        row["cpu_us_per_rt"] = median([c for c in (cpu_per_rt(r) for r in group) if c])
        rows.append(row)
    return rows


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def paired_ratio(
    runs: list[dict[str, Any]], action: str, n: int, value: Any, system: str = "ours"
) -> tuple[float | None, list[float]]:
    """Median over repetitions of value(system run) / value(old run of the same repetition)."""
    ratios = []
    for r in runs:
        if r["action"] != action or r["n"] != n or r["system"] != system:
            continue
        old = _find(runs, action=action, n=n, system="old", rep=r.get("rep", 0))
        if old is None:
            continue
        a, b = value(r), value(old)
        if a and b:
            ratios.append(a / b)
    return median(ratios), ratios


def _rps(r: dict[str, Any]) -> float | None:
    return r.get("rps")


def _p99(r: dict[str, Any]) -> float | None:
    return (r.get("latency_ms") or {}).get("p99")


def _find(rows: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _runs(ratios: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in ratios)


def _res(r: dict[str, Any], name: str, what: str) -> Any:
    return ((r.get("resources") or {}).get(name) or {}).get(what)


def load_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| action | N | system | round trips/s (median) | each run | vs old "
        "| p50 ms | p90 ms | p99 ms | max ms "
        "| p99 vs old | connected / failed | Node-RED CPU % / RSS MiB "
        "| daemon (server) CPU % / RSS MiB "
        "| loadgen CPU % | server CPU µs per round trip |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- "
        "| --- | ---: | ---: |",
    ]
    for r in rows:
        old = _find(rows, action=r["action"], n=r["n"], system="old")
        lat = r["latency_ms"]
        olat = (old or {}).get("latency_ms", {})
        nr = (
            f"{_fmt(_res(r, 'node-red', 'cpu_pct'))} / {_fmt(_res(r, 'node-red', 'rss_max_mib'))}"
            if r["system"] != "null"
            else "-"
        )
        dn = "daemon" if r["system"] == "ours" else "server"
        dm = (
            f"{_fmt(_res(r, dn, 'cpu_pct'))} / {_fmt(_res(r, dn, 'rss_max_mib'))}"
            if r["system"] != "old"
            else "-"
        )
        out.append(
            f"| {r['action']} | {r['n']} | {LABEL[r['system']]} | {r['rps']:.0f} "
            f"| {', '.join(f'{x:.0f}' for x in r.get('runs_rps', [r['rps']]))} "
            f"| {_ratio(r['rps'], (old or {}).get('rps'))} "
            f"| {_fmt(lat['p50'], 2)} | {_fmt(lat['p90'], 2)} | {_fmt(lat['p99'], 2)} "
            f"| {_fmt(lat['max'], 2)} | {_ratio(lat['p99'], olat.get('p99'))} "
            f"| {r['connected']} / {r['failed']} | {nr} | {dm} "
            f"| {_fmt(_res(r, 'loadgen', 'cpu_pct'))} | {_fmt(r.get('cpu_us_per_rt'), 0)} |"
        )
    return out


def cpu_per_rt(r: dict[str, Any]) -> float | None:
    """CPU time of the system under test (Node-RED + daemon, or the null server) per round trip."""
    names = ("server",) if r["system"] == "null" else ("node-red", "daemon")
    pct = [_res(r, n, "cpu_pct") for n in names]
    total = sum(p for p in pct if p is not None)
    if not r.get("rps") or not total:
        return None
    return total / 100 / r["rps"] * 1e6


# -- versions ----------------------------------------------------------------------

VERSION_BASE = "2.0.1"
VERSION_LABELS = {
    "2.0.1": "2.0.1",
    "1.6": "1.6",
    "2.1": "2.1",
    "mixed": "mixed (a third each)",
    "2.0.1#2": "2.0.1 again (control)",
}


def cpu_us_per_rt_turns(r: dict[str, Any], label: str, names: tuple[str, ...]) -> float | None:
    """CPU µs of the processes ``names`` per round trip over every turn of group ``label``."""
    turns = [t for t in r.get("slices", []) if t["group"] == label]
    cpu = [(t.get("cpu_s") or {}).get(n) for t in turns for n in names]
    trips = sum(t["round_trips"] for t in turns)
    if not trips or not cpu or any(c is None for c in cpu):
        return None
    return sum(c for c in cpu if c is not None) / trips * 1e6


def turn_ratios(r: dict[str, Any], label: str, base: str = VERSION_BASE) -> list[float]:
    """Round trips/s of each turn of ``label`` over those of the ``base`` turn of the same
    round (loadgen's rotation: each group once per round, rounds a few turns long)."""
    by_round: dict[int, dict[str, float]] = {}
    for t in r.get("slices", []):
        if t["measured_s"]:
            by_round.setdefault(t["round"], {})[t["group"]] = t["round_trips"] / t["measured_s"]
    return [
        turns[label] / turns[base]
        for turns in by_round.values()
        if turns.get(label) and turns.get(base)
    ]


def quartiles(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[1], q[2]


def version_ratio(r: dict[str, Any], label: str) -> float | None:
    """The median of ``turn_ratios``: the headline ratio of round trips/s to 2.0.1."""
    q = quartiles(turn_ratios(r, label))
    return None if q is None else q[1]


def _within(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return "yes" if ratio >= 0.9 else "no"


def versions_table(block: dict[str, Any]) -> list[str]:
    out = [
        "| action | stations' version | round trips/s (all its turns) "
        "| vs 2.0.1: round trips/s, median of the rounds [quartiles] | within 10 %? "
        "| p50 ms | p99 ms | vs 2.0.1: p99 | daemon CPU µs per round trip | vs 2.0.1: daemon CPU "
        "| Node-RED + daemon CPU µs per round trip |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in block["runs"]:
        groups = r["groups"]
        base = groups.get(VERSION_BASE) or {}
        base_cpu = cpu_us_per_rt_turns(r, VERSION_BASE, ("daemon",))
        for label, g in groups.items():
            lat = g["latency_ms"]
            daemon = cpu_us_per_rt_turns(r, label, ("daemon",))
            server = cpu_us_per_rt_turns(r, label, ("node-red", "daemon"))
            if label == VERSION_BASE:
                ratio, within, p99, cpu = "1 (the baseline)", "-", "-", "-"
            else:
                q = quartiles(turn_ratios(r, label))
                ratio = "-" if q is None else f"{q[1]:.2f}x [{q[0]:.2f}-{q[2]:.2f}]"
                # the control: how far two identical groups come apart (the run's noise)
                control = label.startswith(VERSION_BASE + "#")
                within = "(noise)" if control else _within(None if q is None else q[1])
                p99 = _ratio(lat.get("p99"), (base.get("latency_ms") or {}).get("p99"))
                cpu = _ratio(daemon, base_cpu)
            out.append(
                f"| {r['action']} | {VERSION_LABELS.get(label, label)} | {g['rps']:.0f} "
                f"| {ratio} | {within} | {_fmt(lat['p50'], 2)} | {_fmt(lat['p99'], 2)} | {p99} "
                f"| {_fmt(daemon, 1)} | {cpu} | {_fmt(server, 1)} |"
            )
    return out


def mixed_table(block: dict[str, Any]) -> list[str]:
    """The mixed group's stations, each version apart."""
    rows = []
    for r in block["runs"]:
        mixed = r["groups"].get("mixed") or {}
        for version, v in (mixed.get("by_version") or {}).items():
            per_station = v["rps"] / v["stations"] if v["stations"] else None
            rows.append(
                f"| {r['action']} | {version} | {v['stations']} | {_fmt(per_station, 1)} "
                f"| {_fmt(v['latency_ms']['p50'], 2)} | {_fmt(v['latency_ms']['p99'], 2)} |"
            )
    if not rows:
        return []
    return [
        "| action | version | stations | round trips/s per station | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
    ]


def versions_section(results: dict[str, Any]) -> list[str]:
    block = results.get("versions")
    if not block or not block.get("runs"):
        return ["Not run."]
    vplan = block["plan"]
    accepted = ", ".join(f"`{v}`" for v in vplan["accepted"])
    r0 = block["runs"][0]
    order = [
        ["control" if g.startswith(VERSION_BASE + "#") else g for g in row]
        for row in r0["rotation"]["order"]
    ]
    shown = ", ".join(" ".join(row) for row in order[:2]) + (", ..." if len(order) > 2 else "")
    groups = len(r0["groups"])
    what = (
        f"Our node alone (the other systems stopped), its CSMS node accepting {accepted}. "
        f"Groups of N={vplan['n']} stations: every station on OCPP 2.0.1, on 1.6, on 2.1 "
        "(subprotocols `ocpp2.0.1`, `ocpp1.6`, `ocpp2.1`; each version's own "
        "BootNotification, Heartbeat and MeterValues, the same eight sampled values in "
        "MeterValues), a mixed group (station i on the (i mod 3)-th version: a third each), "
        "and a control group on 2.0.1 again. `bench/check_payloads.py` first validates every "
        "request and the flow's answers with the engine's own schemas."
    )
    method = (
        f"**Method:** for each action one generator connects and boots all {groups} groups "
        f"({groups * vplan['n']} connections), then the groups take turns, one group at a "
        f"time, {_fmt(vplan['slice_s'])} s each (the first {_fmt(vplan['settle_s'])} s not "
        f"recorded), in {len(order)} rounds of one turn per group whose orders form "
        f"Williams squares ({shown}: each group in each place of a round and after each "
        "other group equally often). A ratio is a group's round trips/s over the 2.0.1 "
        "group's in the same round, seconds apart, so that the shared machine's drift (its "
        "speed moved by a factor of two to five within minutes during these runs) falls on "
        "both; the table gives the median over the rounds and the quartiles. The control's "
        "ratio shows how far two identical groups come apart in the same run. Latencies and "
        "CPU (the daemon's and Node-RED's CPU time in the turns' windows, sampled every "
        "0.1 s) are pooled over a group's turns. bench/notes.md (*OCPP versions*, below) "
        "has three runs side by side and why 2.1's MeterValues cost more."
    )
    lines = [
        textwrap.fill(what, 88),
        "",
        textwrap.fill(method, 88),
        "",
        f"This run: `{block['command']}`, started {block['date']}, took "
        f"{_fmt(block.get('elapsed_s'))} s; load average at start "
        f"{block.get('loadavg_start')}, at end {block.get('loadavg_end')}.",
    ]
    if block.get("note"):
        lines += ["", f"**{block['note']}**"]
    lines += ["", *versions_table(block)]
    problems = [
        f"{r['action']}: connected {r['connected']} of {r['stations']}, failed {r['failed']}, "
        f"lost {r['lost']}, CALLERRORs {r['callerrors']}"
        for r in block["runs"]
        if r["connected"] < r["stations"] or r["failed"] or r["lost"] or r["callerrors"]
    ]
    lines += [""]
    if problems:
        lines += ["Not clean: " + "; ".join(problems) + "."]
    else:
        lines += ["Every station connected and booted; none was lost; no CALLERROR."]
    mixed = mixed_table(block)
    if mixed:
        lines += [
            "",
            "The mixed group's stations by version (one CALL outstanding each, so each",
            "station's rate is 1 / its latency):",
            "",
            *mixed,
        ]
    return lines


# -- metrics ------------------------------------------------------------------------

#: the issue's bound: metrics on may cost at most this share of round trips per second
METRICS_COST_BOUND = 0.05


def metrics_table(block: dict[str, Any]) -> list[str]:
    lines = [
        "| action | rt/s off | rt/s on | on/off per round: median (quartiles) | "
        "p99 ms off / on | daemon µs CPU per rt off / on | scrapes, slowest |",
        "| --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for r in block["runs"]:
        off, on = r["groups"]["off"], r["groups"]["on"]
        q = quartiles(turn_ratios(r, "on", base="off"))
        ratio = f"{q[1]:.3f} ({q[0]:.3f}-{q[2]:.3f})" if q else "-"
        cpu = [cpu_us_per_rt_turns(r, g, (f"daemon-{g}",)) for g in ("off", "on")]
        scrapes = r.get("scrapes_s") or []
        lines.append(
            f"| {r['action']} | {_fmt(off['rps'], 0)} | {_fmt(on['rps'], 0)} | {ratio} | "
            f"{_fmt(off['latency_ms']['p99'])} / {_fmt(on['latency_ms']['p99'])} | "
            f"{_fmt(cpu[0])} / {_fmt(cpu[1])} | "
            f"{len(scrapes)}, {_fmt(max(scrapes) * 1000 if scrapes else None)} ms |"
        )
    return lines


def metrics_section(results: dict[str, Any]) -> list[str]:
    block = results.get("metrics")
    if not block or not block.get("runs"):
        return ["Not run."]
    mplan = block["plan"]
    method = (
        "What the engine's metrics (`ocppNodes.metrics`, docs/operations.md) cost. Two "
        "Node-RED runtimes with our node and the same flow, one with the metrics endpoint "
        f"on (and `/metrics` scraped every {_fmt(mplan['scrape_every_s'])} s during the "
        "run), one without. One generator connects and boots "
        f"N={mplan['n']} stations to each, then the two groups take turns, "
        f"{_fmt(mplan['slice_s'])} s each (the first {_fmt(mplan['settle_s'])} s not "
        f"recorded), {mplan['rounds']} rounds, each group first in every other round, as in "
        "the versions scenario: a ratio is the *on* group's round trips/s over the *off* "
        "group's in the same round, seconds apart. The goal: under "
        f"{METRICS_COST_BOUND:.0%} fewer round trips per second with metrics on (a "
        f"median ratio above {1 - METRICS_COST_BOUND:.2f})."
    )
    lines = [
        textwrap.fill(method, 88),
        "",
        f"This run: `{block['command']}`, started {block['date']}, took "
        f"{_fmt(block.get('elapsed_s'))} s; load average at start "
        f"{block.get('loadavg_start')}, at end {block.get('loadavg_end')}.",
    ]
    if block.get("note"):
        lines += ["", f"**{block['note']}**"]
    lines += ["", *metrics_table(block)]
    return lines


# -- fleet ------------------------------------------------------------------------

#: the issue's goal: fleet mode at least this share of direct mode's round trips/s
FLEET_GOAL = 0.5


def turn_cpu_share(r: dict[str, Any], label: str, name: str) -> float | None:
    """CPU of tree ``name`` during the recorded turns of group ``label``, in cores."""
    turns = [t for t in r.get("slices", []) if t["group"] == label]
    cpu = [(t.get("cpu_s") or {}).get(name) for t in turns]
    seconds = sum(t["measured_s"] for t in turns)
    if not seconds or not cpu or any(c is None for c in cpu):
        return None
    return sum(c for c in cpu if c is not None) / seconds


def fleet_names(r: dict[str, Any], label: str) -> tuple[str, ...]:
    """The processes a group's round trips cost, Node-RED apart: the engine (direct);
    the engine, the gateways and Mosquitto (fleet)."""
    if label == "direct":
        return ("daemon",)
    names = {n for t in r.get("slices", []) for n in (t.get("cpu_s") or {})}
    return ("daemon", *sorted(n for n in names if n.startswith("gateway-")), "mosquitto")


def fleet_ratio(r: dict[str, Any]) -> tuple[float, float, float] | None:
    """Quartiles of the per-round ratios fleet/direct of round trips/s."""
    return quartiles(turn_ratios(r, "fleet", base="direct"))


def fleet_table(block: dict[str, Any]) -> list[str]:
    lines = [
        "| action | rt/s direct | rt/s fleet | fleet/direct per round: median (quartiles) "
        "| at least 0.5? | p50 ms direct / fleet | p99 ms direct / fleet "
        "| server CPU µs per rt: direct (engine) / fleet (engine + gateway + Mosquitto) "
        "| fleet's split: engine / gateway / Mosquitto "
        "| Node-RED µs per rt direct / fleet | generator, cores: direct / fleet turns |",
        "| --- | ---: | ---: | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in block["runs"]:
        direct, fleet = r["groups"]["direct"], r["groups"]["fleet"]
        q = fleet_ratio(r)
        ratio = f"{q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f})" if q else "-"
        goal = "-" if q is None else "yes" if q[1] >= FLEET_GOAL else "no"
        server = [cpu_us_per_rt_turns(r, g, fleet_names(r, g)) for g in ("direct", "fleet")]
        split = [cpu_us_per_rt_turns(r, "fleet", (n,)) for n in fleet_names(r, "fleet")]
        split_text = " / ".join(_fmt(x) for x in split)
        nodered = [cpu_us_per_rt_turns(r, g, ("node-red",)) for g in ("direct", "fleet")]
        gen = [turn_cpu_share(r, g, "loadgen") for g in ("direct", "fleet")]
        lines.append(
            f"| {r['action']} | {_fmt(direct['rps'], 0)} | {_fmt(fleet['rps'], 0)} | {ratio} "
            f"| {goal} | {_fmt(direct['latency_ms']['p50'], 2)} / "
            f"{_fmt(fleet['latency_ms']['p50'], 2)} | {_fmt(direct['latency_ms']['p99'])} / "
            f"{_fmt(fleet['latency_ms']['p99'])} | {_fmt(server[0])} / {_fmt(server[1])} "
            f"| {split_text} | {_fmt(nodered[0])} / {_fmt(nodered[1])} "
            f"| {_fmt(gen[0], 2)} / {_fmt(gen[1], 2)} |"
        )
    return lines


def fleet_floor_lines(block: dict[str, Any]) -> list[str]:
    """bench/mqtt_floor.py's medians, and the ceiling they put on the ratio: a fleet
    round trip does at least direct mode's work (the websocket, OCPP, Node-RED, the
    generator) plus the broker hops, so fleet/direct <= direct / (direct + floor)."""
    floor = block.get("mqtt_floor")
    if not floor:
        return []
    medians = floor["median"]
    text = (
        "**The MQTT floor** (bench/mqtt_floor.py): the broker hops of a round trip "
        "alone, without OCPP. An *asker* (the gateway's side: "
        f"{floor['stations']} loops, each publishing a MeterValues CALL, QoS 1, with the "
        "gateway's properties, and waiting for its answer) and an *answerer* (the "
        "engine's side: answers each at once, QoS 1, with the engine's properties), "
        "through one Mosquitto with the settings above; "
        f"{len(floor['rounds']) // max(len(medians), 1)} rounds of {_fmt(floor['seconds'])} s "
        "each, medians. *paho* is fleet mode's own connection (paho-mqtt through "
        "ocpp_nodes/fleet/broker.py); *gmqtt* another pure-Python MQTT 5 client, for "
        "comparison."
    )
    lines = ["", textwrap.fill(text, 88), "", *mqtt_floor_table(floor)]
    paho = medians.get("paho")
    if paho is None or not block.get("runs"):
        return lines
    bounds = []
    for r in block["runs"]:
        parts = [
            cpu_us_per_rt_turns(r, "direct", names)
            for names in (fleet_names(r, "direct"), ("node-red",), ("loadgen",))
        ]
        if any(p is None for p in parts):
            continue
        direct = sum(p for p in parts if p is not None)
        bound = " / ".join(f"{c} {direct / (direct + medians[c]['total']):.2f}" for c in medians)
        bounds.append(f"| {r['action']} | {_fmt(direct)} | {_fmt(2 * direct)} | {bound} |")
    if bounds:
        text = (
            "A fleet round trip costs at least what a direct one costs in all (the "
            "engine's websocket, OCPP and Node-RED link work, Node-RED, the generator) "
            "plus the floor, so on one machine whose cores are all busy, fleet/direct "
            "is at most direct / (direct + floor). Half of direct's rate needs the whole "
            "fleet round trip within twice direct's CPU:"
        )
        lines += [
            "",
            textwrap.fill(text, 88),
            "",
            "| action | direct, µs CPU per rt in all (engine + Node-RED + generator) "
            "| 0.5 needs fleet within, µs | fleet/direct at most, with the floor of |",
            "| --- | ---: | ---: | --- |",
            *bounds,
        ]
    return lines


def mqtt_floor_table(floor: dict[str, Any]) -> list[str]:
    lines = [
        "| client | rt/s | µs CPU per rt: asker (gateway's side) + answerer (engine's side) "
        "+ Mosquitto = total |",
        "| --- | ---: | --- |",
    ]
    for client, m in floor["median"].items():
        lines.append(
            f"| {client} | {_fmt(m['rps'], 0)} | {_fmt(m['asker'])} + {_fmt(m['answerer'])} "
            f"+ {_fmt(m['mosquitto'])} = {_fmt(m['total'])} |"
        )
    return lines


def fleet_memory_table(memory: dict[str, Any]) -> list[str]:
    res = memory["resources"]
    idle = memory.get("idle_rss_mib") or {}
    lines = [
        "| process | RSS before the stations, MiB | RSS with them (end), MiB | max, MiB "
        "| KiB per station | CPU % (100 = one core) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = ["node-red", "daemon"]
    order += sorted(n for n in res if n.startswith("gateway-"))
    order += ["mosquitto"]
    for name in order:
        v = res.get(name)
        if v is None:
            continue
        base = idle.get(name)
        # stations this process holds: a gateway its share, the others all of them
        held = memory["per_gateway"] if name.startswith("gateway-") else memory["stations"]
        per = (v["rss_end_mib"] - base) * 1024 / held if base is not None and held else None
        lines.append(
            f"| {name} | {_fmt(base)} | {_fmt(v['rss_end_mib'])} | {_fmt(v['rss_max_mib'])} "
            f"| {_fmt(per)} | {_fmt(v['cpu_pct'])} |"
        )
    return lines


def fleet_section(results: dict[str, Any]) -> list[str]:
    block = results.get("fleet")
    if not block:
        return ["Not run."]
    if block.get("skipped"):
        return [f"Skipped: {block['skipped']}."]
    fplan = block["plan"]
    lines: list[str] = []
    if block.get("runs"):
        method = (
            "Fleet mode (issue 24, docs/fleet.md) next to direct mode. One Node-RED with "
            "two of our CSMS nodes, each wired to the same answering function: one "
            "listening itself (direct), one in fleet mode; one `ocpp-nodes gateway` and "
            "one Mosquitto 2 (MQTT 5, password file; tests/fleetkit.py's) between the "
            "fleet node and its stations, all on 127.0.0.1. One generator connects and "
            f"boots N={fplan['n']} stations to the direct node and N to the gateway, then "
            f"the two groups take turns, {_fmt(fplan['slice_s'])} s each (the first "
            f"{_fmt(fplan['settle_s'])} s not recorded), {fplan['rounds']} rounds, each "
            "group first in every other round, as in the versions and metrics scenarios: "
            "a ratio is the fleet group's round trips/s over the direct group's in the "
            "same round, seconds apart. The goal of the issue: fleet at least half of "
            "direct. Server CPU per round trip is the CPU time of the processes named, "
            "read from /proc every 0.1 s and interpolated at each turn's edges, over the "
            "round trips of that group's turns. *generator* is the load generator's CPU "
            "in cores during the group's turns: near 1, it is the generator's own "
            "ceiling that limits the rate. Mosquitto's settings beyond its defaults: "
            + (", ".join(f"`{x}`" for x in fplan.get("mosquitto_settings") or []) or "none")
            + " (bench/notes.md, *Fleet mode*, says why)."
        )
        lines += [
            textwrap.fill(method, 88),
            "",
            f"This run: `{block['command']}`, started {block['date']} (commit "
            f"{block.get('commit', '?')}), took {_fmt(block.get('elapsed_s'))} s; load "
            f"average at start {block.get('loadavg_start')}, at end "
            f"{block.get('loadavg_end')}.",
        ]
        if block.get("note"):
            lines += ["", f"**{block['note']}**"]
        lines += ["", *fleet_table(block), ""]
        problems = [
            f"{r['action']}: connected {r['connected']} of {r['stations']}, booted "
            f"{r['booted']}, failed {r['failed']}, lost {r['lost']}, CALLERRORs "
            f"{r['callerrors']}"
            for r in block["runs"]
            if r["connected"] < r["stations"]
            or r["booted"] < r["stations"]
            or r["failed"]
            or r["lost"]
            or r["callerrors"]
        ]
        if problems:
            lines += ["Not clean: " + "; ".join(problems) + "."]
        else:
            lines += [
                "Every station connected and booted, every request was answered: none "
                "lost, no CALLERROR."
            ]
    lines += fleet_floor_lines(block)
    memory = block.get("memory")
    if memory:
        text = (
            f"**Memory:** a Node-RED with one CSMS node in fleet mode, {memory['gateways']} "
            f"gateways, Mosquitto; {memory['stations']:,} stations, "
            f"{memory['per_gateway']:,} to each gateway (their *CS Auth* entries PBKDF2-SHA256 "
            f"hashes of {memory['hash_cost']:,} rounds), connect (one generator process per "
            "gateway, at most 500 handshakes in flight each; the gateways' default 500 "
            "logins per second), boot, and send a Heartbeat every "
            f"{memory['heartbeat_interval_s']} s for {_fmt(memory['duration_s'])} s. RSS "
            "before the stations came and at the end of that phase; CPU over the phase."
        )
        lines += [
            "",
            textwrap.fill(text, 88),
            "",
            f"{memory['connected']:,} of {memory['stations']:,} connected after "
            f"{_fmt(memory['connect_s'])} s (from the generators' start to the last "
            f"handshake; 503 retries {memory['retries_503']}), {memory['booted']:,} booted, "
            f"{memory['round_trips']:,} Heartbeats answered (p50 "
            f"{_fmt(max(g['latency_ms']['p50'] or 0 for g in memory['generators']))} ms, p99 "
            f"{_fmt(max(g['latency_ms']['p99'] or 0 for g in memory['generators']))} ms, the "
            f"slower generator's); failed {memory['failed']}, lost "
            f"{memory['lost']}, CALLERRORs {memory['callerrors']}, still open at the end "
            f"{memory['open_at_end']:,}. Load average before {memory['loadavg_before']}, "
            f"after {memory['loadavg_after']}.",
            "",
            *fleet_memory_table(memory),
        ]
    return lines


def version_targets(results: dict[str, Any]) -> list[str]:
    block = results.get("versions") or {}
    out = []
    for action in ("Heartbeat", "MeterValues"):
        run = _find(block.get("runs") or [], action=action)
        for label in ("1.6", "2.1"):
            name = f"round trips/s of {label} within 10 % of 2.0.1's, {action}, N=100"
            ratio = version_ratio(run, label) if run else None
            if ratio is None:
                out.append(f"| {name} | not run | - |")
                continue
            out.append(f"| {name} | {ratio:.2f}x (see Versions) | {_within(ratio)} |")
    return out


def ratio_table(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    runs = results["scenarios"]
    out = [
        "| action | N | ocpp-nodes / old: round trips/s | each run "
        "| null / old: round trips/s | ocpp-nodes / old: p99 | each run | null / old: p99 "
        "| ocpp-nodes / old: CPU per round trip |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    keys = sorted({(r["action"], r["n"]) for r in rows})
    for action, n in keys:
        o = _find(rows, action=action, n=n, system="ours") or {}
        d = _find(rows, action=action, n=n, system="old") or {}
        thr, thr_runs = paired_ratio(runs, action, n, _rps)
        lat, lat_runs = paired_ratio(runs, action, n, _p99)
        null_thr, _ = paired_ratio(runs, action, n, _rps, system="null")
        null_lat, _ = paired_ratio(runs, action, n, _p99, system="null")
        out.append(
            f"| {action} | {n} | {_x(thr)} | {_runs(thr_runs)} | {_x(null_thr)} "
            f"| {_x(lat)} | {_runs(lat_runs)} | {_x(null_lat)} "
            f"| {_ratio(o.get('cpu_us_per_rt'), d.get('cpu_us_per_rt'))} |"
        )
    return out


def machine_state_table(results: dict[str, Any], n: int = 100) -> list[str]:
    """Each N=`n` run with the machine's state: the wake-up probe and run-queue waits."""
    runs = [r for r in results["scenarios"] if r["n"] == n and r.get("wakeup_before")]
    if not runs:
        return []
    if runs[0]["wakeup_before"].get("cores") == 2:
        probe = [
            "(`bench/wakeup.py`'s Unix-socket ping-pong between two processes pinned to two",
            "different cores, 2,000 round trips, median; the other systems stopped).",
        ]
    else:
        probe = [
            "(`bench/wakeup.py`'s Unix-socket ping-pong, 2,000 round trips, median; the other",
            "systems stopped). In this run the two processes were not pinned, and in so short",
            "a probe the scheduler mostly kept them on one core: about 10 µs is a context",
            "switch (see *unix, one core* above), not the wake-up of an idle core.",
        ]
    out = [
        f"Every N={n} run in the order it ran, with how long each process waited for a",
        "core while it ran (`/proc/<pid>/task/*/schedstat`, % of one core; *server* is",
        "our daemon or the null server) and how long waking a process took just before",
        "and just after the run",
        *probe,
        "",
        "| action | system | run | round trips/s | p50 ms | p99 ms | wake-up before µs "
        "| wake-up after µs | run-queue wait % Node-RED / server / loadgen |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        server = "daemon" if r["system"] == "ours" else "server"
        waits = " / ".join(
            _fmt(_res(r, proc, "run_queue_wait_pct")) for proc in ("node-red", server, "loadgen")
        )
        lat = r["latency_ms"]
        out.append(
            f"| {r['action']} | {LABEL[r['system']]} | {r.get('rep', 0) + 1} | {r['rps']:.0f} "
            f"| {_fmt(lat['p50'], 2)} | {_fmt(lat['p99'], 2)} "
            f"| {_fmt(r['wakeup_before'].get('round_trip_p50_us'))} "
            f"| {_fmt((r.get('wakeup_after') or {}).get('round_trip_p50_us'))} | {waits} |"
        )
    return out


def capacity_table(results: dict[str, Any]) -> list[str]:
    out = [
        "| system | stations | connected | all connected after s | 503 retries | failed "
        "| lost | heartbeats/s | p50 ms | p99 ms | Node-RED CPU % / RSS MiB "
        "| daemon (server) CPU % / RSS max MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results["capacity"]:
        nr = (
            f"{_fmt(_res(r, 'node-red', 'cpu_pct'))} / {_fmt(_res(r, 'node-red', 'rss_max_mib'))}"
            if r["system"] != "null"
            else "-"
        )
        dn = "daemon" if r["system"] == "ours" else "server"
        dm = (
            f"{_fmt(_res(r, dn, 'cpu_pct'))} / {_fmt(_res(r, dn, 'rss_max_mib'))}"
            if r["system"] != "old"
            else "-"
        )
        out.append(
            f"| {LABEL[r['system']]} | {r['n']} | {r['connected']} | {_fmt(r['connect_s'])} "
            f"| {r['retries_503']} | {r['failed']} {r['fail_reasons'] or ''} "
            f"| {r['lost']} {r.get('lost_reasons') or ''} "
            f"| {r['rps']:.0f} | {_fmt(r['latency_ms']['p50'], 2)} "
            f"| {_fmt(r['latency_ms']['p99'], 2)} | {nr} | {dm} |"
        )
    return out


def targets(results: dict[str, Any]) -> list[str]:
    runs = results["scenarios"]
    out = [
        "| target | result (median of the runs' ratios; each run) | met? |",
        "| --- | --- | --- |",
    ]
    goals = [("Heartbeat", 100, 2), ("MeterValues", 100, 3), ("Heartbeat", 1000, 2)]
    goals.append(("MeterValues", 1000, 3))
    for action, n, factor in goals:
        ratio, each = paired_ratio(runs, action, n, _rps)
        name = f"round trips/s >= {factor:g}x old, {action}, N={n}"
        if ratio is None:
            out.append(f"| {name} | not run | - |")
            continue
        out.append(
            f"| {name} | {ratio:.2f}x ({_runs(each)}) | {'yes' if ratio >= factor else 'no'} |"
        )
    for action in ("Heartbeat", "MeterValues"):
        ratio, each = paired_ratio(runs, action, 100, _p99)
        name = f"p99 <= 0.5x old, {action}, N=100"
        if ratio is None:
            out.append(f"| {name} | not run | - |")
            continue
        out.append(f"| {name} | {ratio:.2f}x ({_runs(each)}) | {'yes' if ratio <= 0.5 else 'no'} |")
    cap = _find(results["capacity"], system="ours")
    if cap:
        rss = _res(cap, "daemon", "rss_max_mib")
        ok = (
            cap["connected"] >= 10000
            and cap["lost"] == 0
            and cap["connect_s"] is not None
            and cap["connect_s"] <= 30
            and rss is not None
            and rss < 400
        )
        out.append(
            f"| 10,000 stations all connected within 30 s, none dropped, daemon RSS < 400 MiB "
            f"| {cap['connected']} of {cap['n']} connected, the last after "
            f"{_fmt(cap['connect_s'])} s; {cap['lost']} lost; daemon RSS max {_fmt(rss)} MiB "
            f"| {'yes' if ok else 'no'} |"
        )
    else:
        out.append("| 10,000 stations connected within 30 s, daemon RSS < 400 MiB | not run | - |")
    cs = results.get("cs_side") or {}
    hop = cs.get("shim_to_kernel_us") or {}
    if hop.get("p50") is not None:
        out.append(
            f"| hop shim -> frame leaving the daemon, p50 < 100 µs | {hop['p50']} µs to the "
            f"socket write, {cs['shim_to_send_returned_us']['p50']} µs to its return "
            f"({hop['samples']} Heartbeats, see CS side) | {'yes' if hop['p50'] < 100 else 'no'} |"
        )
    else:
        out.append("| hop shim -> frame leaving the daemon, p50 < 100 µs | not run | - |")
    return out + version_targets(results)


def plot(results: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not rows:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"ours": "tab:blue", "old": "tab:orange", "null": "tab:gray"}
    styles = {"Heartbeat": "-", "MeterValues": "--"}
    for system in ("ours", "old", "null"):
        for action in ("Heartbeat", "MeterValues"):
            pts = sorted(
                (r["n"], r["rps"], r["latency_ms"]["p99"])
                for r in rows
                if r["system"] == system and r["action"] == action
            )
            if not pts:
                continue
            ns = [p[0] for p in pts]
            label = f"{LABEL[system]}, {action}"
            kw = {"color": colors[system], "linestyle": styles[action], "marker": "o"}
            ax1.plot(ns, [p[1] for p in pts], label=label, **kw)
            ax2.plot(ns, [p[2] for p in pts], label=label, **kw)
    ax1.set(xscale="log", xlabel="stations (N)", ylabel="round trips / s", title="Throughput")
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="stations (N)",
        ylabel="p99 latency (ms)",
        title="p99 latency",
    )
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    note = results.get("note") or ""
    fig.suptitle(f"OCPP 2.0.1 CSMS under load, {results['date'][:10]} {note}", fontsize=9)
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    plt.close(fig)
    return True


def _wakeup_lines(wakeup: dict[str, dict[str, float]] | None) -> list[str]:
    if not wakeup:
        return []
    parts = [
        f"{kind} {w['round_trip_p50_us']} µs (send {w['send_p50_us']} µs)"
        for kind, w in wakeup.items()
    ]
    return [
        "- waking another process (`bench/wakeup.py`, ping-pong between two processes, "
        "median round trip = two wake-ups): " + "; ".join(parts)
    ]


def write(results: dict[str, Any]) -> None:
    m = results["machine"]
    plan = results["plan"]
    rows = summarize(results["scenarios"])
    has_png = plot(results, rows)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Written by bench/report.py from bench/results/last-run.json; "
        "hand-written text goes into bench/notes.md. -->",
        "",
        "ocpp-nodes (the shim + daemon) against the package it replaces,",
        f"`{m['old_package']}`, and a do-nothing websocket server (`bench/null_server.py`,",
        "the load generator's ceiling), on the same machine and the same Node-RED, in one run.",
        "",
    ]
    if results.get("note"):
        lines += [f"**{results['note']}**", ""]
    lines += [
        "## How to run",
        "",
        "```sh",
        "make bench                       # full run (see the time below)",
        "make bench BENCH_ARGS=--quick    # ~5 s per scenario, N up to 100, capacity 1000",
        "make bench BENCH_ARGS=--versions-only   # only the OCPP versions scenario (~10 min)",
        "make bench BENCH_ARGS=--metrics-only    # only the metrics on/off scenario (~5 min)",
        "make bench BENCH_ARGS=--fleet-only      # only the fleet mode scenario (~10 min)",
        ".venv/bin/python bench/run.py --help",
        "```",
        "",
        f"This run: `{results['command']}`, started {results['date']}, took "
        f"{_fmt(results.get('elapsed_s'))} s.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}",
        f"- Python {m['python']}, aiohttp {m['aiohttp']}, websockets {m['websockets']}; "
        f"Node.js {m['node']}, Node-RED {m['node_red']}",
        f"- ocpp-nodes {m['ours']}; {m['old_package']}",
        f"- load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}; "
        f"open files limit {results.get('nofile')}",
        *_wakeup_lines(m.get("wakeup")),
        "",
        "Everything (generator, Node-RED, daemon) shares the same cores, so the",
        "generator's own CPU is part of the picture (column *loadgen CPU %*, 100 = one core).",
        "",
        "## What is measured",
        "",
        "- `bench/loadgen.py`: N stations connect (HTTP Basic auth, subprotocol `ocpp2.0.1`,",
        "  no permessage-deflate offered), send a BootNotification, then each keeps exactly",
        "  one CALL outstanding (Heartbeat, or MeterValues with 8 sampled values: voltage and",
        "  current per phase, power, energy register) for "
        f"{_fmt(plan['duration'])} s after {_fmt(plan['warmup'])} s of warm-up.",
        "  Latency is send -> matching CALLRESULT, per CALL.",
        "- The flow under test (`bench/flows.py`): a CSMS node -> one function node answering",
        "  BootNotification, Heartbeat, StatusNotification, MeterValues, TransactionEvent and",
        "  Authorize -> back into the CSMS node. Schema validation is on in both packages",
        "  (ours always validates; the old one validates what it receives and sends).",
        "- CPU % (100 = one core) and RSS are sampled every 0.25 s with psutil over the",
        "  measured window: Node-RED's process, our daemon (a child of Node-RED), the null",
        "  server's process, and the generator's processes. *server CPU µs per round trip*",
        "  is the CPU time of the system under test (Node-RED + daemon, or the null server)",
        "  divided by the round trips: less sensitive to other load on the machine than",
        "  round trips/s.",
        "",
        "## Results: round trips",
        "",
    ]
    if has_png:
        lines += ["![round trips/s and p99 against N](benchmarks.png)", ""]
    others = (
        "the other systems' processes stopped (SIGSTOP) during each run"
        if plan.get("others_paused")
        else "the other systems idle but running during each run"
    )
    lines += [
        f"Each scenario ran {plan.get('repeat', 1)} time(s); within a repetition the three",
        "systems ran back to back (order rotated per repetition), with",
        f"{others}. A ratio is the median",
        "of the ratios of runs made back to back (*each run* lists them); throughput:",
        "higher is better, p99 and CPU: lower is better.",
        "",
    ]
    lines += ratio_table(results, rows)
    lines += ["", "All numbers (medians of the runs):", ""]
    lines += load_table(rows)
    state = machine_state_table(results)
    if state:
        lines += ["", "## The machine during each run at N=100", ""]
        lines += state
    lines += ["", "## Versions", ""]
    lines += versions_section(results)
    lines += ["", "## Metrics on and off", ""]
    lines += metrics_section(results)
    lines += ["", "## Fleet", ""]
    lines += fleet_section(results)
    lines += ["", "## Capacity", ""]
    if results["capacity"]:
        c0 = results["capacity"][0]
        lines += [
            f"{c0['n']} stations connect (at most 500 handshakes in flight per generator "
            "process, 2 processes; a 503 is retried after its Retry-After), boot, then each",
            f"sends a Heartbeat every 10 s for {_fmt(plan['capacity_duration'])} s.",
            "*all connected after* counts from the generator's start to the last successful",
            "handshake.",
            "",
        ]
        lines += capacity_table(results)
    else:
        lines += ["Not run."]
    lines += ["", "## CS side", ""]
    cs = results.get("cs_side")
    if cs:
        lines += [
            "A flow sends Heartbeats through one CS node (ours) to the null server, the next as",
            "soon as the previous answer comes out of the CS node: one request at a time.",
            "This Node-RED runs with `OCPP_NODES_HOP_TRACE` set (ocpp_nodes/hop_trace.py): the",
            "shim stamps each input with the monotonic clock as it enters the node's input",
            "handler; the daemon takes the time again when the Heartbeat's websocket frame is",
            "handed to the kernel (the transport's write), and once more when the websocket",
            "library's send has returned (adds the kernel's loopback TCP work). The first is",
            "the hop the out-of-process design adds: msgpack, the local socket and waking the",
            "daemon, its handling, validation, JSON and websocket framing.",
            "**flow -> null server** is wider: the function node stamps the MessageId with",
            "the wall clock just before the message leaves it, and the null server subtracts",
            "that from the frame's arrival (adds Node-RED's delivery to the CS node, loopback",
            "TCP and the null server's read).",
            "",
            "| requests/s | measured | p50 µs | p90 µs | p99 µs | max µs | samples "
            "| Node-RED CPU % | daemon CPU % |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, pct in (
            ("shim -> frame handed to the kernel", cs.get("shim_to_kernel_us") or {}),
            ("shim -> websocket send returned", cs.get("shim_to_send_returned_us") or {}),
            ("flow -> null server", cs["hop_us"]),
        ):
            lines.append(
                f"| {cs['rps']:.0f} | {label} | {_fmt(pct.get('p50'))} | {_fmt(pct.get('p90'))} "
                f"| {_fmt(pct.get('p99'))} | {_fmt(pct.get('max'))} | {pct.get('samples', 0)} "
                f"| {_fmt(_res(cs, 'node-red', 'cpu_pct'))} "
                f"| {_fmt(_res(cs, 'daemon', 'cpu_pct'))} |"
            )
        woke = (cs.get("wakeup_before") or {}).get("round_trip_p50_us")
        if woke is not None:
            lines += [
                "",
                f"Just before this run, a Unix-socket ping-pong took {woke} µs per round trip",
                "(`bench/wakeup.py`, 2,000 round trips, median; two wake-ups; "
                + (
                    "pinned to two different cores)."
                    if cs["wakeup_before"].get("cores") == 2
                    else "not pinned)."
                ),
            ]
    else:
        lines += ["Not run."]
    lines += ["", "## Targets of the issue", ""]
    lines += targets(results)
    profiles = [r for r in results["scenarios"] if r.get("profile")]
    if profiles:
        r = profiles[0]
        lines += [
            "",
            f"## Profile of the daemon ({r['action']}, N={r['n']}, py-spy, raw samples)",
            "",
            "Top frames by own time (self) and, below, by inclusive time.",
            "",
            "| frame | self % | inclusive % |",
            "| --- | ---: | ---: |",
        ]
        for row in r["profile"]:
            mark = " (inclusive)" if row.get("inclusive") else ""
            lines.append(f"| `{row['frame']}`{mark} | {row['self_pct']} | {row['incl_pct']} |")
    if NOTES.is_file():
        lines += ["", NOTES.read_text().rstrip()]
    DOC.write_text("\n".join(lines) + "\n")
