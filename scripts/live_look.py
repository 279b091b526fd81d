"""Traffic for the live look (scripts/live-look), then the dashboard's key panels plotted from
Prometheus' HTTP API with the dashboard's own queries.

The traffic runs against the demo's databases through psql, so every change travels the real
path: Postgres -> Debezium -> Kafka -> harmony -> target topics -> JDBC sinks -> Postgres ->
Debezium -> harmony (the echo).
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
      "-p", os.environ.get("PG_PORT", "55432"), "-U", "harmony"]
CONNECT = "http://127.0.0.1:" + os.environ.get("CONNECT_PORT", "8083")
PANELS = [
    "Changes in, by system and op",
    "Record changes, by outcome",
    "End-to-end latency (source commit → target record acknowledged)",
    "Conflicts, by entity, field and strategy",
    "Targets out of sync: records",
    "Targets out of sync: oldest delivery waiting",
    "Consumer lag, by group and topic",
    "Dead letters and decode failures",
]


def log(message):
    print(f"[live-look] {message}", file=sys.stderr, flush=True)


def sql(db, statements):
    env = dict(os.environ, PGPASSWORD=os.environ.get("PG_PASSWORD", "harmony"))
    subprocess.run(PG + ["-d", db, "-c", "; ".join(statements)], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def connector(name, verb):
    request = urllib.request.Request(f"{CONNECT}/connectors/{name}/{verb}", method="PUT")
    urllib.request.urlopen(request).read()


def poison(topic):
    """A record no decoder can read, on a Debezium topic: it must reach the dead-letter topic."""
    classpath = os.path.join(REPO, ".stack/lib/kafka/*")
    subprocess.run(["java", "-cp", classpath, "org.apache.kafka.tools.ConsoleProducer",
                    "--bootstrap-server", "127.0.0.1:9092", "--topic", topic],
                   input=b"this is not a change event\n", check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def traffic(minutes, seed):
    """Steady changes in all three systems, concurrent edits every few seconds, one poison
    record, and the shop's sink stopped from 40% to 65% of the run."""
    rng = random.Random(seed)
    run = time.strftime("%H%M%S")
    created = []  # (sku, created at)
    total = minutes * 60
    started = time.time()
    events = []
    paused = resumed = poisoned = False
    n = 0
    while (elapsed := time.time() - started) < total:
        tick = time.time()
        new = [f"LL{run}-{n + i:05d}" for i in range(3)]
        n += len(new)
        sql("erp", [f"INSERT INTO products (sku, name, price, quantity) VALUES "
                    f"('{s}', 'Item {s[-5:]}', {rng.randint(100, 9999) / 100:.2f}, 100)"
                    for s in new])
        created += [(s, tick) for s in new]
        # Products old enough to have reached the shop and the warehouse through the sinks.
        settled = [s for s, at in created if tick - at > 10]
        if settled:
            hot = settled[-200:]  # recent products change most: a skewed, realistic load
            sql("shop", [f"UPDATE items SET stock = stock - 1 WHERE item_sku = '{rng.choice(hot)}'"
                         for _ in range(2)])
            sql("wms", [f"UPDATE skus SET on_hand = on_hand + 5 WHERE sku = '{rng.choice(hot)}'"])
            sql("erp", [f"UPDATE products SET price = price + 0.10 WHERE sku = '{rng.choice(hot)}'"])
            if int(elapsed) % 5 == 0:
                # Two systems edit one product before either sees the other's write.
                sku = rng.choice(hot)
                sql("shop", [f"UPDATE items SET title = 'Web {sku[-5:]}', stock = stock - 2 "
                             f"WHERE item_sku = '{sku}'"])
                sql("erp", [f"UPDATE products SET name = 'ERP {sku[-5:]}' WHERE sku = '{sku}'"])
                sql("wms", [f"UPDATE skus SET on_hand = on_hand - 3 WHERE sku = '{sku}'"])
        if not poisoned and elapsed > 0.3 * total:
            poison("erp.public.products")
            events.append((time.time(), "poison record"))
            poisoned = True
        if not paused and elapsed > 0.4 * total:
            connector("shop-sink", "pause")
            events.append((time.time(), "shop sink paused"))
            log("shop sink paused")
            paused = True
        if paused and not resumed and elapsed > 0.65 * total:
            connector("shop-sink", "resume")
            events.append((time.time(), "shop sink resumed"))
            log("shop sink resumed")
            resumed = True
        time.sleep(max(0.0, 1.0 - (time.time() - tick)))
    log(f"{n} products created in {minutes} min, with sales, receipts, price changes and "
        "concurrent edits")
    return started, events


def prometheus(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def legend(fmt, metric):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) or "value"


def plot(base, start, end, events, out):
    with open(os.path.join(REPO, "deploy/grafana/harmony-dashboard.json")) as f:
        panels = {p["title"]: p for p in json.load(f)["panels"]}
    fig, axes = plt.subplots(4, 2, figsize=(14, 15))
    for ax, title in zip(axes.flat, PANELS):
        panel = panels[title]
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        for target in panel["targets"]:
            data = prometheus(base, "/api/v1/query_range", query=target["expr"],
                              start=start, end=end, step=5)
            for series in data["result"]:
                xs = [datetime.fromtimestamp(float(t), timezone.utc) for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), series["metric"]))
        for at, what in events:
            ax.axvline(datetime.fromtimestamp(at, timezone.utc), color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel({"s": "seconds", "bytes": "bytes"}.get(unit, ""))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    marks = ", ".join(f"{what} at {time.strftime('%H:%M:%S', time.gmtime(at))}"
                      for at, what in events)
    fig.suptitle(f"harmony, live: the demo pipeline under traffic (UTC; dotted: {marks})",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=80)
    log(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--run", help="where the run's times are kept (JSON)")
    parser.add_argument("--replot", action="store_true",
                        help="plot the run recorded in --run again, without new traffic")
    args = parser.parse_args()
    if args.replot:
        with open(args.run) as f:
            record = json.load(f)
        started, end, events = record["started"], record["end"], record["events"]
    else:
        started, events = traffic(args.minutes, args.seed)
        log("letting the pipeline settle for 60 s")
        time.sleep(60)
        end = time.time()
        if args.run:
            with open(args.run, "w") as f:
                json.dump({"started": started, "end": end, "events": events}, f)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(args.prometheus, started - 30, end, events, args.out)
    for name, query in [
        ("changes in", "sum(harmony_events_consumed_total)"),
        ("record changes by outcome", "sum by (outcome) (harmony_record_changes_total)"),
        ("conflicts by field and strategy",
         "sum by (field, strategy) (harmony_conflicts_total)"),
        ("dead letters", "sum(harmony_dead_letter_records_total)"),
        ("targets out of sync now", "sum by (target) (harmony_target_out_of_sync_records)"),
        ("p99 end-to-end over the run (s)",
         f"histogram_quantile(0.99, sum by (le) (increase("
         f"harmony_end_to_end_latency_seconds_bucket[{int(end - started)}s])))"),
    ]:
        result = prometheus(args.prometheus, "/api/v1/query", query=query, time=end)["result"]
        shown = ", ".join(
            f"{' '.join(v for v in r['metric'].values()) or 'total'}={float(r['value'][1]):g}"
            for r in result)
        print(f"{name}: {shown}")
    # Prometheus keeps every alert's state as the ALERTS series: what fired during the run.
    fired = prometheus(args.prometheus, "/api/v1/query_range", query='ALERTS{alertstate="firing"}',
                       start=started, end=end, step=5)["result"]
    for series in fired:
        labels = {k: v for k, v in series["metric"].items()
                  if k not in ("__name__", "alertname", "alertstate")}
        first, last = series["values"][0][0], series["values"][-1][0]
        print(f"alert {series['metric']['alertname']} {labels} firing from "
              f"{time.strftime('%H:%M:%S', time.gmtime(first))} to "
              f"{time.strftime('%H:%M:%S', time.gmtime(last))} UTC")
    if not fired:
        print("no alert fired")


if __name__ == "__main__":
    main()
