#!/usr/bin/env python3
"""Turns the raw outputs of one benchmark run into records, and the records into a table.

bench/run.sh calls it after each measurement to append one JSON line to the run's record
file, and once at the end to print the table (and save it as markdown):

  report.py fsync  --out REC --label L FILE          (JSON printed by fsync_rate.py)
  report.py wrk    --out REC --via V --nodes N FILE...  (wrk --latency outputs, summed)
  report.py load   --out REC --store S --tickets N --phase P FILE  (generator --report)
  report.py rate   REC --store S --tickets N --fraction F --min M   (a rate to ask for)
  report.py table  REC --md FILE [--meta KEY=VALUE ...]
"""

import argparse
import json
import re
import sys
from typing import Optional

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}

# The targets: (name, numerator, denominator, minimum).
TARGET_BALANCER_NGINX = 1.0
TARGET_PURCHASES_SYNC = 1.0
TARGET_500K_50K = 0.8
# The store on PostgreSQL: against the file store, and against the plain SKIP LOCKED design.
TARGET_PG_FILES = 0.5
TARGET_PG_SKIP_LOCKED = 1.0
# The designs of a --pg run, in the order shown.
PG_DESIGNS = {
    "files": "file store (JSON journal, flock)",
    "postgres": "PostgreSQL store (node --database)",
    "skip-locked": "SKIP LOCKED baseline (one transaction per purchase)",
}
# The runs of a --box-office run: what every buyer does (generator load's mix flags).
BOX_PHASES = {
    "buy": "buy (the original mix)",
    "hold": "hold and walk away (--hold-abandon-share 1)",
    "confirm": "hold, then confirm (--hold-confirm-share 1)",
    "cancel": "buy, then cancel (--cancel-share 1)",
}


def append(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


def read_records(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> dict:
    """The figures of one `wrk --latency` output."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+\w+)", text, re.M)
    if not rps or not total:
        raise ValueError("no 'Requests/sec' or 'N requests in' line: did wrk fail?")
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return {
        "rps": float(rps.group(1)),
        "requests": int(total.group(1)),
        "seconds": duration_ms(total.group(2)) / 1000.0,
        "p50_ms": duration_ms(dist["50"]),
        "p99_ms": duration_ms(dist["99"]),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
    }


def cmd_fsync(args) -> None:
    with open(args.file, encoding="utf-8") as f:
        figures = json.load(f)
    append(args.out, {"kind": "fsync", "label": args.label, **figures})


def cmd_wrk(args) -> None:
    parts = []
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            parts.append(parse_wrk(f.read()))
    # Several wrk processes ran at once (one per node): their rates add up; the p99 of
    # the whole is at most the worst part's, which is what is reported.
    record = {
        "kind": "wrk",
        "via": args.via,
        "nodes": args.nodes,
        "round": args.round,
        "parts": len(parts),
        "rps": sum(p["rps"] for p in parts),
        "requests": sum(p["requests"] for p in parts),
        "p50_ms": max(p["p50_ms"] for p in parts),
        "p99_ms": max(p["p99_ms"] for p in parts),
        "errors": sum(p["non2xx"] + p["socket_errors"] for p in parts),
    }
    if args.cpu_seconds is not None:
        requests = record["requests"] or 1
        record["cpu_us_per_request"] = args.cpu_seconds * 1e6 / requests
    append(args.out, record)


def cmd_load(args) -> None:
    with open(args.file, encoding="utf-8") as f:
        r = json.load(f)
    elapsed = r["elapsed_seconds"]
    record = {
        "kind": "load",
        "store": args.store,
        "tickets": args.tickets,
        "phase": args.phase,
        "asked_rate": r["rate"],
        "concurrency": r["concurrency"],
        "sent": r["sent"],
        "purchases": r["purchases"],
        "tickets_sold": r["tickets_sold"],
        "sold_out": r["sold_out"],
        "stopped": r["stopped_because"],
        "sending_seconds": r["sending_seconds"],
        "elapsed_seconds": elapsed,
        # Committed purchases over the whole run, the drain of the last in-flight
        # purchases included: under saturation purchases/sending_seconds would count the
        # (up to `concurrency`) purchases still queued at the end as if made in time.
        "committed_per_s": r["purchases"] / elapsed if elapsed > 0 else 0.0,
        "purchases_per_sending_s": (
            r["purchases"] / r["sending_seconds"] if r["sending_seconds"] > 0 else 0.0
        ),
        "achieved_rate": r["achieved_rate"],
        "behind_schedule": r["behind_schedule"],
        "errors": r["errors_total"],
        "errors_by_kind": r["errors"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "max_ms": r["latency_ms"]["max"],
        "latency_samples": r["latency_ms"]["count"],
        "nodes_answering": len(r["nodes"]),
    }
    # The worst second (for stalls): the highest per-second p99 and the fewest answers,
    # leaving out the first and last seconds (ramp-up, drain).
    seconds = [p for p in r.get("per_second", []) if p["sent"] > 0][1:-1]
    if seconds:
        worst = max(seconds, key=lambda p: p["p99_ms"])
        record["worst_second_p99_ms"] = worst["p99_ms"]
        record["worst_second"] = worst["second"]
        record["fewest_answers_in_a_second"] = min(p["answered"] for p in seconds)
        record["seconds_p99_over_50ms"] = sum(1 for p in seconds if p["p99_ms"] > 50)
    if args.compactions is not None:
        record["compactions"] = args.compactions
    # The box office's outcomes (generator reports before it have none): committed holds,
    # confirms and cancels per second over the whole run, as purchases are.
    outcomes = r.get("outcomes", {})
    for name in ("held", "confirmed", "cancelled", "released"):
        record[f"{name}_per_s"] = outcomes.get(name, 0) / elapsed if elapsed > 0 else 0.0
    record["outcomes"] = outcomes
    record["step_p99_ms"] = {k: v["p99"] for k, v in r.get("step_latency_ms", {}).items()}
    append(args.out, record)


def cmd_start(args) -> None:
    append(args.out, {"kind": "start", "store": args.store, "tickets": args.tickets,
                      "how": args.how, "seconds": args.seconds})


def find(records, **match) -> Optional[dict]:
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def cmd_rate(args) -> None:
    records = read_records(args.records)
    cap = find(records, kind="load", store=args.store, tickets=args.tickets, phase="capacity")
    rate = cap["committed_per_s"] * args.fraction if cap else args.min
    print(f"{max(rate, args.min):.1f}")


# ---------------------------------------------------------------------------------------
# The table.


def fmt(value, digits=1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if abs(value) >= 100 or digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(a, b) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def markdown(headers, rows) -> list:
    """An aligned markdown table (readable as plain text too)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    # Columns of figures are right-aligned, columns of words left-aligned.
    numeric = re.compile(r"^[0-9.,x]+$|^n/a$")
    right = [all(numeric.match(row[i]) or row[i].split(" ")[0].replace(",", "").isdigit()
                 for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row):
        padded = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if r else (":" + "-" * (w + 1))
        for w, r in zip(widths, right)
    ) + "|"
    return [line(cells[0]), rule] + [line(row) for row in cells[1:]]


def verdict(value, target) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= target else "MISSED"


def errors_text(record) -> str:
    if not record or not record.get("errors"):
        return "0"
    kinds = record.get("errors_by_kind") or {}
    return f"{record['errors']} (" + ", ".join(f"{k} {v}" for k, v in kinds.items()) + ")"


# The GET /events paths, in table order.
PATHS = ["direct", "balancer", "nginx", "haproxy"]


def mean_rounds(wrks) -> list:
    """One record per (path, nodes): the mean of its rounds, in the order first seen."""
    groups = {}
    for r in wrks:
        groups.setdefault((r["via"], r["nodes"]), []).append(r)
    merged = []
    for (via, nodes), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], PATHS.index(kv[0][0]) if kv[0][0] in PATHS else 9)):
        n = len(rs)
        merged.append({
            "via": via, "nodes": nodes, "parts": rs[0]["parts"],
            "rps": sum(r["rps"] for r in rs) / n,
            "rounds_rps": [r["rps"] for r in rs],
            "p50_ms": sum(r["p50_ms"] for r in rs) / n,
            "p99_ms": sum(r["p99_ms"] for r in rs) / n,
            "errors": sum(r["errors"] for r in rs),
            "cpu_us": (sum(r["cpu_us_per_request"] for r in rs) / n
                       if all("cpu_us_per_request" in r for r in rs) else None),
        })
    return merged


# The stall runs: phase -> (description, goal).
STALL_PHASES = {
    "stalls-300k": ("300,000 tickets, 32 clients, saturated", "p99 < 25 ms, max < 100 ms"),
    "paced-1m": ("1,000,000 tickets, paced", "no second's p99 > 50 ms"),
}


def cmd_table(args) -> None:
    records = read_records(args.records)
    meta = dict(m.split("=", 1) for m in args.meta)
    out = [f"# Benchmark: {meta.pop('title', 'ticket cluster')}", ""]
    for key, value in meta.items():
        out.append(f"- {key}: {value}")
    out.append("")

    syncs = [r for r in records if r["kind"] == "fsync"]
    sync_ref = max((r["rate"] for r in syncs), default=None)
    if syncs:
        out += ["## 1. Disk: 256-byte append + fdatasync in a loop (python3, same filesystem)", ""]
        rows = [[r["label"], fmt(r["rate"]), fmt(r["p50_ms"], 3), fmt(r["p99_ms"], 2), r["syncs"]] for r in syncs]
        out += markdown(["when", "syncs/s", "p50 ms", "p99 ms", "syncs"], rows)
        out += ["", f"Reference sync rate (the higher, so the stricter): {fmt(sync_ref)}/s", ""]

    wrks = mean_rounds([r for r in records if r["kind"] == "wrk"])
    if wrks:
        out += [f"## 2. GET /events with wrk ({meta.get('wrk', 'see run.sh')})", ""]
        rows = []
        for r in wrks:
            how = r["via"] + (f" ({r['parts']} wrk processes, one per node)" if r["parts"] > 1 else "")
            rounds = " / ".join(fmt(x) for x in r["rounds_rps"])
            rows.append([r["nodes"], how, fmt(r["rps"]), rounds, fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
                         fmt(r["cpu_us"]), r["errors"]])
        out += markdown(["nodes", "path", "req/s (mean)", "req/s per round", "p50 ms", "p99 ms",
                         "CPU us/req", "errors"], rows)
        out += ["", "p50 and p99 are the means over rounds; with one wrk process per node, each "
                "round's p99 is the worst process's. CPU us/req: user + system CPU of the "
                "proxy (balancer process, nginx's workers, or haproxy) per request; for direct, of the "
                "node(s). Less noisy than req/s on a shared machine.", ""]

    stalls = [r for r in records if r["kind"] == "load" and r["phase"] in STALL_PHASES]
    starts = [r for r in records if r["kind"] == "start"]
    loads = [r for r in records if r["kind"] == "load" and r["phase"] not in STALL_PHASES]
    stores = [s for s in ("before", "after") if any(r["store"] == s for r in loads)]
    sizes = sorted({r["tickets"] for r in loads})
    if stores:
        out += ["## 3. Committed purchases/s: generator -> balancer -> 3 nodes on one store", ""]
        rows = []
        for store in stores:
            for n in sizes:
                cap = find(loads, store=store, tickets=n, phase="capacity")
                lat = find(loads, store=store, tickets=n, phase="latency")
                if not cap and not lat:
                    continue
                rows.append([
                    store, f"{n:,}",
                    fmt(cap and cap["committed_per_s"]),
                    fmt(cap and cap["p99_ms"]),
                    cap and f"{cap['stopped']} {cap['elapsed_seconds']:.1f}s" or "n/a",
                    errors_text(cap),
                    fmt(lat and lat["asked_rate"]),
                    fmt(lat and lat["committed_per_s"]),
                    fmt(lat and lat["p50_ms"], 2),
                    fmt(lat and lat["p99_ms"], 2),
                    errors_text(lat),
                ])
        out += markdown([
            "store", "tickets", "saturated: committed/s", "sat. p99 ms", "ended", "sat. errors",
            "paced: asked/s", "paced: committed/s", "paced p50 ms", "paced p99 ms", "paced errors",
        ], rows)
        out += [
            "",
            "saturated: open loop far above capacity, so the generator's concurrency cap keeps the "
            "cluster busy; committed/s = 201 answers / whole run (drain included); its p99 counts "
            "time queued behind the cap (latency is measured from the scheduled send). "
            "paced: a second run asking for a fraction of the saturated rate: its p99 is the "
            "latency of a cluster that keeps up.",
            "",
        ]
        if len(stores) == 2:
            rows = []
            for n in sizes:
                b = find(loads, store="before", tickets=n, phase="capacity")
                a = find(loads, store="after", tickets=n, phase="capacity")
                r = ratio(a and a["committed_per_s"], b and b["committed_per_s"])
                rows.append([f"{n:,}", fmt(b and b["committed_per_s"]), fmt(a and a["committed_per_s"]), fmt(r, 1) + "x" if r else "n/a"])
            out += ["### Before / after (saturated committed purchases/s)", ""]
            out += markdown(["tickets", "before (whole-file store)", "after (journal)", "after / before"], rows)
            out.append("")

    # Ratios against the targets.
    rows = []
    for nodes in (1, 3):
        direct = find(wrks, via="direct", nodes=nodes)
        bal = find(wrks, via="balancer", nodes=nodes)
        ngx = find(wrks, via="nginx", nodes=nodes)
        hap = find(wrks, via="haproxy", nodes=nodes)
        r = ratio(bal and bal["rps"], direct and direct["rps"])
        if r is not None:
            rows.append([f"GET /events req/s, balancer / direct, {nodes} node(s)", fmt(r, 2), "-", "-"])
        r = ratio(bal and bal["rps"], ngx and ngx["rps"])
        if r is not None:
            rows.append([f"GET /events req/s, balancer / nginx, {nodes} node(s)", fmt(r, 2),
                         f">= {TARGET_BALANCER_NGINX}", verdict(r, TARGET_BALANCER_NGINX)])
        r = ratio(bal and bal["rps"], hap and hap["rps"])
        if r is not None:
            rows.append([f"GET /events req/s, balancer / HAProxy, {nodes} node(s)", fmt(r, 2), "-", "-"])
        if direct and bal and ngx:
            added_bal = bal["p99_ms"] - direct["p99_ms"]
            added_ngx = ngx["p99_ms"] - direct["p99_ms"]
            rows.append([f"GET /events added p99 ms (proxy p99 - direct p99), balancer vs nginx, {nodes} node(s)",
                         f"{added_bal:.2f} vs {added_ngx:.2f}", "balancer <= nginx",
                         "met" if added_bal <= added_ngx else "not met"])
        if direct and hap:
            rows.append([f"GET /events added p99 ms, HAProxy, {nodes} node(s)",
                         f"{hap['p99_ms'] - direct['p99_ms']:.2f}", "-", "-"])
        r = ratio(ngx and ngx["cpu_us"], bal and bal["cpu_us"])
        if r is not None:
            rows.append([f"GET /events proxy CPU per request, nginx / balancer, {nodes} node(s)", fmt(r, 2), "-", "-"])
        r = ratio(hap and hap["cpu_us"], bal and bal["cpu_us"])
        if r is not None:
            rows.append([f"GET /events proxy CPU per request, HAProxy / balancer, {nodes} node(s)", fmt(r, 2), "-", "-"])
    after = {n: find(loads, store="after", tickets=n, phase="capacity") for n in sizes}
    for n in sizes:
        if after.get(n) and sync_ref:
            r = ratio(after[n]["committed_per_s"], sync_ref)
            target = f">= {TARGET_PURCHASES_SYNC}" if n >= 50000 else "-"
            rows.append([f"purchases/s at {n:,} tickets / raw sync rate", fmt(r, 2), target,
                         verdict(r, TARGET_PURCHASES_SYNC) if n >= 50000 else "-"])
    if after.get(500000) and after.get(50000):
        r = ratio(after[500000]["committed_per_s"], after[50000]["committed_per_s"])
        rows.append(["purchases/s at 500,000 / at 50,000 tickets", fmt(r, 2),
                     f">= {TARGET_500K_50K}", verdict(r, TARGET_500K_50K)])
    before = {n: find(loads, store="before", tickets=n, phase="capacity") for n in sizes}
    if before.get(500000) and before.get(50000):
        r = ratio(before[500000]["committed_per_s"], before[50000]["committed_per_s"])
        rows.append(["(before) purchases/s at 500,000 / at 50,000 tickets", fmt(r, 3), "-", "-"])
    pg_rows = []
    for design, name in PG_DESIGNS.items():
        for r in [r for r in loads if r["store"] == design and r["phase"] == "capacity"]:
            pg_rows.append([name, f"{r['tickets']:,}", fmt(r["committed_per_s"]), fmt(r["p50_ms"], 2),
                            fmt(r["p99_ms"], 2), f"{r['stopped']} {r['elapsed_seconds']:.1f}s",
                            errors_text(r)])
    if pg_rows:
        out += ["## 3. The store on PostgreSQL: committed purchases/s, generator -> balancer -> 3 "
                "servers, same PostgreSQL server", ""]
        out += markdown(["design", "tickets", "committed/s", "p50 ms", "p99 ms", "ended", "errors"],
                        pg_rows)
        out += ["", "Saturated open loop, as in section 3 (committed/s = 201 answers / whole run).", ""]
    for n in sizes:
        files = find(loads, store="files", tickets=n, phase="capacity")
        pg = find(loads, store="postgres", tickets=n, phase="capacity")
        skip = find(loads, store="skip-locked", tickets=n, phase="capacity")
        r = ratio(pg and pg["committed_per_s"], files and files["committed_per_s"])
        if files:
            rows.append([f"purchases/s at {n:,} tickets, PostgreSQL store / file store", fmt(r, 2),
                         f">= {TARGET_PG_FILES}", verdict(r, TARGET_PG_FILES)])
        r = ratio(pg and pg["committed_per_s"], skip and skip["committed_per_s"])
        if skip:
            rows.append([f"purchases/s at {n:,} tickets, PostgreSQL store / SKIP LOCKED", fmt(r, 2),
                         f">= {TARGET_PG_SKIP_LOCKED}", verdict(r, TARGET_PG_SKIP_LOCKED)])
        r = ratio(skip and skip["committed_per_s"], files and files["committed_per_s"])
        if skip and files:
            rows.append([f"purchases/s at {n:,} tickets, SKIP LOCKED / file store", fmt(r, 2), "-", "-"])
    if stalls:
        out += ["## 5. Stalls: compaction under load (generator -> balancer -> 3 nodes)", ""]
        srows = []
        for phase, (label, goal) in STALL_PHASES.items():
            for store in ("before", "after"):
                r = find(stalls, store=store, phase=phase)
                if not r:
                    continue
                srows.append([
                    label, store, fmt(r["asked_rate"]), fmt(r["committed_per_s"]),
                    r.get("compactions", "n/a"), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
                    fmt(r["max_ms"], 1), fmt(r.get("worst_second_p99_ms"), 1),
                    r.get("seconds_p99_over_50ms", "n/a"), r.get("fewest_answers_in_a_second", "n/a"),
                    errors_text(r), goal,
                ])
        out += markdown(["run", "build", "asked/s", "committed/s", "compactions", "p50 ms",
                         "p99 ms", "max ms", "worst second's p99 ms", "seconds with p99 > 50 ms",
                         "fewest answers in a second", "errors", "goal"], srows)
        out += ["", "compactions: snapshot generations the run went through. Seconds: the "
                "first and last are left out (ramp-up, drain).", ""]
    if starts:
        out += ["### Node start on the 1,000,000-ticket store after the paced run", ""]
        out += markdown(["build", "how", "seconds to the first 2xx GET /events"],
                        [[r["store"], r["how"], fmt(r["seconds"], 2)] for r in starts])
        out.append("")

    box = [r for r in loads if r["store"] == "box"]
    if box:
        out += ["## 3. Box office: committed writes/s, generator -> balancer -> 3 nodes on one "
                "file store", ""]
        box_rows = []
        for n in sorted({r["tickets"] for r in box}):
            for phase, name in BOX_PHASES.items():
                r = find(box, tickets=n, phase=phase)
                if not r:
                    continue
                steps = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["step_p99_ms"].items()))
                box_rows.append([f"{n:,}", name, fmt(r["committed_per_s"]), fmt(r["held_per_s"]),
                                 fmt(r["confirmed_per_s"]), fmt(r["cancelled_per_s"]),
                                 fmt(r["p99_ms"], 2), steps or "-",
                                 f"{r['stopped']} {r['elapsed_seconds']:.1f}s", errors_text(r)])
        out += markdown(["tickets", "every buyer", "purchases/s", "holds/s", "confirms/s",
                         "cancels/s", "first write p99 ms", "later step p99 ms", "ended", "errors"],
                        box_rows)
        out += ["", "Saturated open loop as in section 3, each run on a fresh copy of the seeded "
                "store. purchases/s counts 201 purchases, confirms included; a hold-then-confirm "
                "buyer makes two writes, a buy-then-cancel buyer two.", ""]
        for n in sorted({r["tickets"] for r in box}):
            buy = find(box, tickets=n, phase="buy")
            hold = find(box, tickets=n, phase="hold")
            confirm = find(box, tickets=n, phase="confirm")
            cancel = find(box, tickets=n, phase="cancel")
            for label, value in [
                ("holds/s / purchases/s", ratio(hold and hold["held_per_s"], buy and buy["committed_per_s"])),
                ("confirms/s / purchases/s",
                 ratio(confirm and confirm["confirmed_per_s"], buy and buy["committed_per_s"])),
                ("cancels/s / purchases/s",
                 ratio(cancel and cancel["cancelled_per_s"], buy and buy["committed_per_s"])),
            ]:
                if value is not None:
                    rows.append([f"{label} at {n:,} tickets (box office)", fmt(value, 2), "-", "-"])
        sizes_box = sorted({r["tickets"] for r in box})
        if 50000 in sizes_box and 500000 in sizes_box:
            for phase, key, name in (("buy", "committed_per_s", "purchases/s"),
                                     ("hold", "held_per_s", "holds/s"),
                                     ("confirm", "confirmed_per_s", "confirms/s")):
                big, small = find(box, tickets=500000, phase=phase), find(box, tickets=50000, phase=phase)
                r = ratio(big and big[key], small and small[key])
                if r is not None:
                    rows.append([f"{name} at 500,000 / at 50,000 tickets (box office)", fmt(r, 2),
                                 "-", "-"])
    if rows:
        out += ["## 4. Ratios", ""]
        out += markdown(["ratio", "value", "target", "verdict"], rows)
        out.append("")

    text = "\n".join(out)
    print(text)
    if args.md:
        with open(args.md, "w", encoding="utf-8") as f:
            f.write(text)


def recorder(sub, name, run):
    """A subcommand that reads one measurement and appends its record to --out."""
    p = sub.add_parser(name)
    p.add_argument("--out", required=True)
    p.set_defaults(run=run)
    return p


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = recorder(sub, "fsync", cmd_fsync)
    p.add_argument("--label", required=True)
    p.add_argument("file")

    p = recorder(sub, "wrk", cmd_wrk)
    p.add_argument("--via", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--cpu-seconds", type=float, help="CPU used by the serving processes")
    p.add_argument("files", nargs="+")

    p = recorder(sub, "load", cmd_load)
    p.add_argument("--store", required=True, choices=["before", "after", "box", *PG_DESIGNS])
    p.add_argument("--tickets", type=int, required=True)
    p.add_argument("--phase", required=True,
                   choices=["capacity", "latency", *BOX_PHASES, *STALL_PHASES])
    p.add_argument("--compactions", type=int, help="snapshot generations the run went through")
    p.add_argument("file")

    p = recorder(sub, "start", cmd_start)
    p.add_argument("--store", required=True)
    p.add_argument("--tickets", type=int, required=True)
    p.add_argument("--how", required=True)
    p.add_argument("--seconds", type=float, required=True)

    p = sub.add_parser("rate")
    p.add_argument("records")
    p.add_argument("--store", required=True)
    p.add_argument("--tickets", type=int, required=True)
    p.add_argument("--fraction", type=float, required=True)
    p.add_argument("--min", type=float, default=1.0)
    p.set_defaults(run=cmd_rate)

    p = sub.add_parser("table")
    p.add_argument("records")
    p.add_argument("--md")
    p.add_argument("--meta", action="append", default=[])
    p.set_defaults(run=cmd_table)

    args = parser.parse_args()
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
