#!/usr/bin/env python3
"""The growth plot of the scale figures: reads `microblog --json bench catchup` lines (the newest
line per tuple count wins) and draws, against tuples loaded, the new node's catch-up time, a
restarted follower's time to ready, resident memory per tuple, the snapshot and data dir sizes,
and the load's mean and slowest second. Usage: plot-scale.py RESULTS.jsonl OUT.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results, png):
    runs = {}
    with open(results) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("bench") == "catchup":
                runs[r["tuples"]] = r
    if not runs:
        sys.exit(f"no catchup results in {results}")
    n = sorted(runs)
    m = [x / 1e6 for x in n]
    r = [runs[k] for k in n]
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))

    ax[0].plot(m, [x["applied_secs"] for x in r], "o-", label="new node: add to applied all")
    ax[0].plot(m, [x["restart_ready_secs"] for x in r], "s-", label="follower restart: to ready")
    ax[0].axhline(20, color="grey", ls=":", lw=1)
    ax[0].axhline(10, color="grey", ls="--", lw=1)
    ax[0].set_title("recovery (s); targets 20 s / 10 s")
    ax[0].set_xlabel("million tuples")
    ax[0].legend(fontsize=8)

    ax[1].plot(m, [x["new_node_rss_per_tuple"] for x in r], "o-", label="new node")
    ax[1].plot(m, [x["leader_rss_per_tuple"] for x in r], "s-", label="leader (with log)")
    ax[1].axhline(200, color="grey", ls=":", lw=1)
    ax[1].set_title("resident memory (B/tuple); target 200")
    ax[1].set_xlabel("million tuples")
    ax[1].set_ylim(bottom=0)
    ax[1].legend(fontsize=8)

    mib = 1024 * 1024
    ax[2].plot(m, [x["snapshot_bytes"] / mib for x in r], "o-", label="snapshot file")
    ax[2].plot(m, [max(d["bytes"] for d in x["disk_bytes"]) / mib for x in r], "s-",
               label="data dir (largest node)")
    ax[2].set_title("disk (MiB)")
    ax[2].set_xlabel("million tuples")
    ax[2].legend(fontsize=8)

    ax[3].plot(m, [x["load_second_mean"] for x in r], "o-", label="mean second")
    ax[3].plot(m, [x["load_second_min"] for x in r], "s-", label="slowest second")
    ax[3].plot(m, [x["load_second_mean"] / 2 for x in r], ":", color="grey", label="half the mean")
    ax[3].set_title("load: acknowledged writes per second")
    ax[3].set_xlabel("million tuples")
    ax[3].set_ylim(bottom=0)
    ax[3].legend(fontsize=8)

    fig.suptitle("bench catchup at " + ", ".join(f"{k:,}" for k in n) + " tuples (64-byte shape, 3 nodes, 2 cores)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
