"""Writes docs/benchmarks.md and docs/benchmarks.png from bench/run.py's results.

The hand-written parts (what the numbers mean, the next levers) live in
bench/notes.md and are copied in verbatim, so a new run keeps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DOC = REPO / "docs" / "benchmarks.md"
PNG = REPO / "docs" / "benchmarks.png"
NOTES = BENCH / "notes.md"
LABEL = {"ours": "ocpp-nodes", "old": "old package", "null": "null server"}


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


def _res(r: dict[str, Any], name: str, what: str) -> Any:
    return (r.get("resources") or {}).get(name, {}).get(what)


def load_table(results: dict[str, Any]) -> list[str]:
    rows = results["scenarios"]
    out = [
        "| action | N | system | round trips/s | vs old | p50 ms | p90 ms | p99 ms | max ms "
        "| p99 vs old | connected / failed | Node-RED CPU % / RSS MiB "
        "| daemon (server) CPU % / RSS MiB "
        "| loadgen CPU % | server CPU µs per round trip |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- "
        "| ---: | ---: |",
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
            f"| {_ratio(r['rps'], (old or {}).get('rps'))} "
            f"| {_fmt(lat['p50'], 2)} | {_fmt(lat['p90'], 2)} | {_fmt(lat['p99'], 2)} "
            f"| {_fmt(lat['max'], 2)} | {_ratio(lat['p99'], olat.get('p99'))} "
            f"| {r['connected']} / {r['failed']} | {nr} | {dm} "
            f"| {_fmt(_res(r, 'loadgen', 'cpu_pct'))} | {_fmt(cpu_per_rt(r), 0)} |"
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


def ratio_table(results: dict[str, Any]) -> list[str]:
    rows = results["scenarios"]
    out = [
        "| action | N | ocpp-nodes / old: round trips/s | null / old: round trips/s "
        "| ocpp-nodes / old: p99 | null / old: p99 | ocpp-nodes / old: CPU per round trip |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = sorted({(r["action"], r["n"]) for r in rows})
    for action, n in keys:
        o = _find(rows, action=action, n=n, system="ours") or {}
        d = _find(rows, action=action, n=n, system="old") or {}
        z = _find(rows, action=action, n=n, system="null") or {}

        def p99(r: dict[str, Any]) -> float | None:
            return (r.get("latency_ms") or {}).get("p99")

        out.append(
            f"| {action} | {n} | {_ratio(o.get('rps'), d.get('rps'))} "
            f"| {_ratio(z.get('rps'), d.get('rps'))} | {_ratio(p99(o), p99(d))} "
            f"| {_ratio(p99(z), p99(d))} "
            f"| {_ratio(cpu_per_rt(o) if o else None, cpu_per_rt(d) if d else None)} |"
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
    rows = results["scenarios"]
    out = ["| target | preliminary result | met? |", "| --- | --- | --- |"]

    def thr(n: int, factor: float) -> None:
        for action in ("Heartbeat", "MeterValues"):
            o, d = (
                _find(rows, action=action, n=n, system="ours"),
                _find(rows, action=action, n=n, system="old"),
            )
            if not o or not d:
                out.append(f"| throughput >= {factor:g}x old at N={n} ({action}) | not run | - |")
                continue
            ratio = o["rps"] / d["rps"] if d["rps"] else 0
            out.append(
                f"| throughput >= {factor:g}x old at N={n} ({action}) "
                f"| {o['rps']:.0f} vs {d['rps']:.0f} rt/s = {ratio:.2f}x "
                f"| {'yes' if ratio >= factor else 'no'} |"
            )

    thr(100, 2)
    thr(1000, 3)
    for action in ("Heartbeat", "MeterValues"):
        o, d = (
            _find(rows, action=action, n=100, system="ours"),
            _find(rows, action=action, n=100, system="old"),
        )
        if o and d and o["latency_ms"]["p99"] and d["latency_ms"]["p99"]:
            ratio = o["latency_ms"]["p99"] / d["latency_ms"]["p99"]
            out.append(
                f"| p99 at N=100 <= 0.5x old ({action}) | {o['latency_ms']['p99']:.2f} vs "
                f"{d['latency_ms']['p99']:.2f} ms = {ratio:.2f}x "
                f"| {'yes' if ratio <= 0.5 else 'no'} |"
            )
        else:
            out.append(f"| p99 at N=100 <= 0.5x old ({action}) | not run | - |")
    cap = _find(results["capacity"], system="ours")
    if cap:
        rss = _res(cap, "daemon", "rss_max_mib")
        ok = (
            cap["connected"] >= 10000
            and cap["connect_s"] is not None
            and cap["connect_s"] <= 30
            and rss is not None
            and rss < 400
        )
        out.append(
            f"| 10,000 stations connected within 30 s, daemon RSS < 400 MiB "
            f"| {cap['connected']} of {cap['n']} connected, the last after "
            f"{_fmt(cap['connect_s'])} s; daemon RSS max {_fmt(rss)} MiB "
            f"| {'yes' if ok else 'no'} |"
        )
    else:
        out.append("| 10,000 stations connected within 30 s, daemon RSS < 400 MiB | not run | - |")
    cs = results.get("cs_side")
    if cs and cs["hop_us"]["p50"] is not None:
        p50 = cs["hop_us"]["p50"]
        out.append(
            f"| hop shim -> wire p50 < 100 µs | flow -> null server p50 {p50} µs "
            f"(an upper bound, see CS side) | {'yes' if p50 < 100 else 'not shown'} |"
        )
    else:
        out.append("| hop shim -> wire p50 < 100 µs | not run | - |")
    return out


def plot(results: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = results["scenarios"]
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


def write(results: dict[str, Any]) -> None:
    m = results["machine"]
    plan = results["plan"]
    has_png = plot(results)
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
    lines += ["Ratios to the old package (throughput: higher is better; p99 and CPU: lower):", ""]
    lines += ratio_table(results)
    lines += ["", "All numbers:", ""]
    lines += load_table(results)
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
        h = cs["hop_us"]
        lines += [
            "A flow sends Heartbeats through one CS node (ours) to the null server, the next as",
            "soon as the previous answer comes out of the CS node. The function node stamps",
            "the MessageId with the wall clock in µs just before the message leaves it; the null",
            "server subtracts that from the frame's arrival. That delay contains the hop asked",
            "about (shim input -> frame leaving the daemon) plus Node-RED's delivery from the",
            "function node to the CS node and the loopback TCP + aiohttp read in the null",
            "server: an upper bound of the hop.",
            "",
            "| requests/s | flow -> wire p50 µs | p90 µs | p99 µs | max µs | samples "
            "| Node-RED CPU % | daemon CPU % |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {cs['rps']:.0f} | {_fmt(h['p50'])} | {_fmt(h['p90'])} | {_fmt(h['p99'])} "
            f"| {_fmt(h['max'])} | {h['samples']} | {_fmt(_res(cs, 'node-red', 'cpu_pct'))} "
            f"| {_fmt(_res(cs, 'daemon', 'cpu_pct'))} |",
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
