"""How long a worker of the embedded cluster takes to come back after dask-train ends it (a timed-out
trial, a cancelled sweep, a hung DDP rank): from ending it to the cluster having all its workers, and to
their warm-up being done (torch imported and exercised), as a first trial needs.

    python tests/benchmarks/bench_restart.py --rounds 3

Workers are forked from a fork server that has torch loaded (``cluster.worker_main``); before that, a
restarted worker imported torch again (3.3-3.7 s to warm on the 2-core machine this was written on).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from cluster import ClusterSpec, Target, cluster_workers, open_client
    from cluster.client import wait_for_warm_up
    from training.slots import free_workers

    spec = ClusterSpec(workers=args.workers, gpus="off", dashboard_address="127.0.0.1:0")
    start = time.perf_counter()
    with open_client(Target(local=spec, preload=("training.trial", "training.loop"))) as client:
        print(f"cluster up and warm: {time.perf_counter() - start:.2f} s ({args.workers} workers)")
        joined, warm = [], []
        for _ in range(args.rounds):
            worker = sorted(cluster_workers(client))[0]
            start = time.perf_counter()
            free_workers(client, [worker])
            client.wait_for_workers(args.workers, timeout=120)
            joined.append(time.perf_counter() - start)
            wait_for_warm_up(client)
            warm.append(time.perf_counter() - start)
        print(f"worker ended -> back:  {' '.join(f'{t:.2f}' for t in joined)} s "
              f"(median {statistics.median(joined):.2f})")
        print(f"worker ended -> warm:  {' '.join(f'{t:.2f}' for t in warm)} s "
              f"(median {statistics.median(warm):.2f})")


if __name__ == "__main__":
    main()
