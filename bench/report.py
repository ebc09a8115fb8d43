"""Tables and plots from a bench run: bench/results/<run>/summary.md and docs/bench-*.png.

    .venv/bin/python bench/report.py bench/results/latest [--plots-dir docs]

The plots: latency (p50, p99) against offered deliveries/s for the three systems, one figure per
client count (refusing / offering permessage-deflate side by side), and CPU against the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pyspy_top import report as pyspy_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("relayhouse", "nchan", "naive")
COLORS = {"relayhouse": "#1f77b4", "nchan": "#2ca02c", "naive": "#d62728"}


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def fanout_rows(runs, clients, deflate, best=False):
    """The fan-out runs of one table, by rate then system; `best`: one per point (a passing retry wins)."""
    rows = [r for r in runs if r.get("scenario") == "fanout" and r["clients"] == clients and r["deflate"] == deflate]
    if best:
        chosen = {}
        for r in rows:
            key = (r["rate"], r["system"])
            if key not in chosen or (r.get("ok") and not chosen[key].get("ok")):
                chosen[key] = r
        rows = list(chosen.values())
    return sorted(rows, key=lambda r: (r["rate"], SYSTEMS.index(r["system"]), r.get("retry", False)))


def verdict(r):
    if "error" in r:
        return "error"
    if r["ok"]:
        return "ok"
    bits = []
    if r["lost"]:
        bits.append(f"lost {r['lost_pct']:.2g} %")
    if r["duplicated"] or r["out_of_order"]:
        bits.append("dup/reorder")
    if r["closed"]:
        bits.append(f"{r['closed']} closed")
    if not r["kept_up"]:
        bits.append("behind")
    return ", ".join(bits) or "fail"


def fanout_table(runs, clients, deflate):
    rows = fanout_rows(runs, clients, deflate)
    if not rows:
        return ""
    out = [f"#### {clients} clients, {'offering' if deflate else 'refusing'} permessage-deflate", "",
           "| events/s | system | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | result | system CPU % | subscriber CPU % | machine busy % | load 1m | deflate used |",
           "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {fmt(r['rate'])} | {r['system']} | | | | | | error: {r['error'][:60]} | | | | | |")
            continue
        lat, cpu = r["latency_ms"], r["cpu_pct"]
        ext = r.get("connect", {}).get("extensions", {})
        used = "yes" if any("deflate" in k for k in ext) else "no"
        name = r["system"] + (" (retry)" if r.get("retry") else "")
        out.append(f"| {fmt(r['rate'])} | {name} | {fmt(r['deliveries_per_s'])} | {fmt(lat['p50'])} | "
                   f"{fmt(lat['p99'])} | {fmt(lat['p99.9'])} | {fmt(lat['max'])} | {verdict(r)} | "
                   f"{fmt(cpu['system'])} | {fmt(cpu['gen_subscribers'])} | {fmt(cpu['machine_busy_pct_of_all_cores'])} | "
                   f"{fmt(r['loadavg_before'][0], 2)} | {used} |")
    return "\n".join(out) + "\n"


def ratio_table(runs):
    by = {}
    for r in runs:
        if r.get("scenario") == "fanout" and "error" not in r:
            key = (r["clients"], r["rate"], r["deflate"], r["system"])
            if key not in by or (r.get("ok") and not by[key].get("ok")):
                by[key] = r
    out = ["| clients × events/s | deflate offered | relayhouse p99 / nchan p99 | relayhouse CPU / nchan CPU | naive p99 / nchan p99 |",
           "|---|---|---:|---:|---:|"]
    keys = sorted({k[:3] for k in by})
    for clients, rate, deflate in keys:
        n = by.get((clients, rate, deflate, "nchan"))
        rh = by.get((clients, rate, deflate, "relayhouse"))
        nv = by.get((clients, rate, deflate, "naive"))
        if not n or not rh:
            continue

        def ratio(a, b):
            if a is None or b in (None, 0):
                return "–"
            return f"{a / b:.2f}"
        out.append(f"| {clients} × {rate:g} | {'yes' if deflate else 'no'} | "
                   f"{ratio(rh['latency_ms']['p99'], n['latency_ms']['p99'])} | "
                   f"{ratio(rh['cpu_pct']['system'], n['cpu_pct']['system'])} | "
                   f"{ratio(nv['latency_ms']['p99'], n['latency_ms']['p99']) if nv else '–'} |")
    return "\n".join(out) + "\n"


def idle_table(runs):
    rows = [r for r in runs if r.get("scenario") == "idle"]
    if not rows:
        return ""
    out = ["| system | connections | RSS before MiB | RSS after MiB | KiB per connection | connect time s |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['system']} | error: {r['error'][:80]} | | | | |")
            continue
        out.append(f"| {r['system']} | {fmt(r['connected'])} | {r['rss_before_kib'] / 1024:.1f} | "
                   f"{r['rss_after_kib'] / 1024:.1f} | {fmt(r['kib_per_connection'])} | {fmt(r['connect_s'])} |")
    return "\n".join(out) + "\n"


def ingest_table(runs, results):
    rows = [r for r in runs if r.get("scenario") == "ingest"]
    if not rows:
        return ""
    out = ["| backend | events/frame | offered events/s | sent | in the store (unique) | result | stored rows/s | store drained after s | send→relay-receive p50 / p99 / max ms | end-to-end p99 ms | worker CPU % | load 1m |",
           "|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['backend']} | {r['per_frame']} | {fmt(r['rate'])} | error: {r['error'][:80]} | | | | | | | | |")
            continue
        sc, sub = r.get("store_check", {}), r.get("subscriber", {})
        rr = sub.get("relay_receive_ms", {})
        out.append(f"| {r['backend']} | {r['per_frame']} | {fmt(r['rate'])} | {fmt(r['generator']['sent'])} | "
                   f"{fmt(sc.get('count'))} ({fmt(sc.get('uniq'))}) | {'ok' if r['ok'] else 'FAIL'} | "
                   f"{fmt(r.get('rows_per_s_sustained'))} | {fmt(r.get('store_drain_s'))} | "
                   f"{fmt(rr.get('p50'))} / {fmt(rr.get('p99'))} / {fmt(rr.get('max'))} | "
                   f"{fmt(sub.get('latency_ms', {}).get('p99'))} | {fmt(r['cpu_pct']['system'])} | "
                   f"{fmt(r['loadavg_before'][0], 2)} |")
    bare = results.get("clickhouse_driver_insert")
    if bare:
        out.append("")
        out.append(f"Bare clickhouse-driver insert on the same machine: {fmt(bare.get('rows'))} rows in one INSERT "
                   f"{fmt(bare.get('one_insert_rows_per_s'))} rows/s; in INSERTs of 5,000 rows "
                   f"{fmt(bare.get('batches_of_5000_rows_per_s'))} rows/s.")
    return "\n".join(out) + "\n"


def slow_table(runs):
    rows = [r for r in runs if r.get("scenario") == "slow" and "error" not in r]
    if not rows:
        return ""
    out = ["| system | clients × events/s | slow clients | others' p50 ms | others' p99 ms | others' max ms | others lost | stalled client at the end | system CPU % |",
           "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        slow = r.get("slow_clients") or []
        s = "; ".join(("closed " + str(c["close_code"] or "") if c.get("closed_by_server") else "still open")
                      for c in slow) or "–"
        out.append(f"| {r['system']} | {r['clients']} × {r['rate']:g} | {r['slow']} | {fmt(r['latency_ms']['p50'])} | "
                   f"{fmt(r['latency_ms']['p99'])} | {fmt(r['latency_ms']['max'])} | {fmt(r['lost'])} | {s} | "
                   f"{fmt(r['cpu_pct']['system'])} |")
    return "\n".join(out) + "\n"


def cluster_table(runs):
    """Scaling: the same points with 1, 2, 4 workers (REDIS_URL), one row per point (a passing retry wins)."""
    chosen: dict = {}
    for r in runs:
        if r.get("scenario") != "cluster":
            continue
        key = (int(r["env"].get("WEB_CONCURRENCY", 1)), r["clients"], r["rate"])
        if key not in chosen or (r.get("ok") and not chosen[key].get("ok")):
            chosen[key] = r
    if not chosen:
        return ""
    out = ["| workers | clients × events/s | deliveries/s | p50 ms | p99 ms | max ms | result | sockets per worker | "
           "workers' CPU % (sum) | Redis CPU % | subscriber CPU % | machine busy % | load 1m |",
           "|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for (workers, clients, rate), r in sorted(chosen.items()):
        if "error" in r:
            out.append(f"| {workers} | {clients} × {rate:g} | | | | | error: {r['error'][:60]} | | | | | | |")
            continue
        lat, cpu = r["latency_ms"], r["cpu_pct"]
        per = r.get("sockets_per_worker")
        out.append(f"| {workers} | {clients} × {rate:g} | {fmt(r['deliveries_per_s'])} | {fmt(lat['p50'])} | "
                   f"{fmt(lat['p99'])} | {fmt(lat['max'])} | {verdict(r)} | {' / '.join(map(str, per)) if per else '–'} | "
                   f"{fmt(cpu['system'])} | {fmt(cpu.get('redis'))} | {fmt(cpu['gen_subscribers'])} | "
                   f"{fmt(cpu['machine_busy_pct_of_all_cores'])} | {fmt(r['loadavg_before'][0], 2)} |")
    return "\n".join(out) + "\n"


def profiles(runs, out_dir):
    parts = []
    for r in runs:
        if r.get("profile"):
            path = out_dir / r["profile"]
            if path.exists():
                duration = r.get("duration_s")
                parts.append(f"#### {r['id']}\n\n" + pyspy_report(path, top=15, rate=250, duration=duration))
    return "\n\n".join(parts)


def plot(runs, plots_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for clients in sorted({r["clients"] for r in runs if r.get("scenario") == "fanout"}):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
        for ax, deflate in zip(axes, (False, True), strict=True):
            for system in SYSTEMS:
                rows = [r for r in fanout_rows(runs, clients, deflate, best=True)
                        if r["system"] == system and "error" not in r]
                if not rows:
                    continue
                x = [r["rate"] * clients for r in rows]
                for key, style in (("p99", "-"), ("p50", ":")):
                    ax.plot(x, [r["latency_ms"][key] for r in rows], style, marker="o", color=COLORS[system],
                            label=f"{system} {key}")
                bad = [r for r in rows if not r["ok"]]
                ax.scatter([r["rate"] * clients for r in bad], [r["latency_ms"]["p99"] for r in bad], marker="x",
                           s=120, color="black", zorder=5, label="_fail" if system != "naive" else "lost / behind")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"offered deliveries/s ({clients} clients × events/s)")
            ax.set_title(f"{clients} clients, {'offering' if deflate else 'refusing'} permessage-deflate")
            ax.axhline(100, color="grey", linewidth=0.6, linestyle="--")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("latency, upstream send → client parse (ms)")
        handles, labels = axes[0].get_legend_handles_labels()
        h2, l2 = axes[1].get_legend_handles_labels()
        seen = dict(zip(labels + l2, handles + h2, strict=True))
        fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=4, fontsize=8)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = plots_dir / f"bench-latency-{clients}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.4))
    for system in SYSTEMS:
        for clients, marker in ((100, "s"), (1000, "o")):
            rows = [r for r in fanout_rows(runs, clients, False, best=True)
                    if r["system"] == system and "error" not in r]
            if rows:
                ax.plot([r["rate"] * clients for r in rows], [r["cpu_pct"]["system"] for r in rows], marker=marker,
                        color=COLORS[system], label=f"{system}, {clients} clients")
    ax.set_xscale("log")
    ax.set_xlabel("offered deliveries/s")
    ax.set_ylabel("CPU, % of one core (one process)")
    ax.axhline(50, color="grey", linewidth=0.6, linestyle="--")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = plots_dir / "bench-cpu.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--plots-dir", type=Path, default=None,
                        help="where the PNGs go (default: <results>/plots; run.py passes docs/ after a full run)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    out_dir = args.results.resolve()
    results = json.loads((out_dir / "results.json").read_text())
    runs = results["runs"]
    m = results["machine"]
    parts = [f"# Bench run {results['started']}", "",
             f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_gib']} GiB, kernel {m['kernel']}; "
             f"Python {m['python']}, gevent {m['gevent']}, {m['nginx']}, nchan {m['nchan']}, node {m['node']}, ws {m['ws']}; "
             f"git {m['git']}. Load average at start {m['loadavg_at_start']}, at end {results.get('loadavg_at_end')}; "
             f"elapsed {results.get('elapsed_s')} s.", ""]
    parts.append("### Fan-out\n")
    for deflate in (False, True):
        for clients in (100, 1000):
            t = fanout_table(runs, clients, deflate)
            if t:
                parts.append(t)
    parts.append("### Ratios to nchan (same run)\n")
    parts.append(ratio_table(runs))
    parts.append("### Idle connections\n")
    parts.append(idle_table(runs))
    parts.append("### Ingest with persistence on\n")
    parts.append(ingest_table(runs, results))
    parts.append("### A slow client among fast ones\n")
    parts.append(slow_table(runs))
    table = cluster_table(runs)
    if table:
        parts.append("### Several workers behind one upstream connection (REDIS_URL)\n")
        parts.append(table)
    parts.append("### Profiles (py-spy, relay worker)\n")
    parts.append(profiles(runs, out_dir))
    (out_dir / "summary.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {out_dir / 'summary.md'}")
    if not args.no_plots:
        plots_dir = args.plots_dir or out_dir / "plots"
        plots_dir.mkdir(parents=True, exist_ok=True)
        for p in plot(runs, plots_dir):
            print(f"wrote {p}")


if __name__ == "__main__":
    main()
