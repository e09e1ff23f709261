"""Benchmark: sweep overhead. 32 trials of fixed CPU work (~0.25 s each, one torch thread) run
  (1) serially in this process (the work alone),
  (2) through `Sweep.run` on the embedded 2-worker cluster (the product: events, store, model files),
  (3) through a bare `client.map` on a default LocalCluster (Dask's defaults, nothing else).
Prints cluster start time, efficiency = serial / (2 x wall time) and overhead per trial, cold (first run
after the cluster starts: workers still importing torch) and warm (later runs on the same cluster), next to
the ceiling of a plain 2-process pool measured in the same run.
Not part of CI:  python tests/benchmarks/bench_sweep.py [--trials 32] [--seconds 0.25]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # workers import tests.benchmarks.busy

# torch and the training package are imported inside functions: worker processes re-import this main
# module when they spawn, and a torch import there would count as cluster start-up.
WORKLOAD = "tests.benchmarks.busy:Busy"


def calibrate(seconds: float) -> int:
    """Matmul steps that take ``seconds`` on one thread here."""
    from tests.benchmarks.busy import busy_work

    busy_work(50)
    start = time.perf_counter()
    busy_work(200)
    per_step = (time.perf_counter() - start) / 200
    return max(1, round(seconds / per_step))


def serial(trials: int, steps: int) -> float:
    from tests.benchmarks.busy import busy_work

    start = time.perf_counter()
    for _ in range(trials):
        busy_work(steps)
    return time.perf_counter() - start


def sweep_once(client, trials: int, steps: int, runs: str, name: str) -> float:
    from training.sweep import Sweep

    sweep = Sweep(WORKLOAD, {"trial": list(range(trials))}, params={"steps": steps}, epochs=1, name=name,
                  runs_dir=runs)
    start = time.perf_counter()
    result = sweep.run(client)
    elapsed = time.perf_counter() - start
    assert (result.table["state"] == "completed").all(), result.table
    return elapsed


def bare_map_once(client, trials: int, steps: int) -> float:
    from tests.benchmarks.busy import busy_work

    start = time.perf_counter()
    client.gather(client.map(busy_work, [steps] * trials, pure=False))
    return time.perf_counter() - start


def pool_once(pool, trials: int, steps: int) -> float:
    """The ceiling: a plain 2-process pool with torch already imported in both processes."""
    from tests.benchmarks.busy import busy_work

    start = time.perf_counter()
    pool.map(busy_work, [steps] * trials, chunksize=1)
    return time.perf_counter() - start


def _pool_warm(_: int) -> int:
    import torch

    torch.set_num_threads(1)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=0.25, help="CPU work per trial")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds of each runner, interleaved")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from cluster import ClusterSpec, Target, open_client

    runs = tempfile.mkdtemp(prefix="bench-sweep-")
    started = time.perf_counter()
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"),
                            preload=("training.trial",))) as ours:
        ours_start = time.perf_counter() - started
        started = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as cluster, \
                Client(cluster) as bare:
            bare.wait_for_workers(2, timeout=60)
            bare_start = time.perf_counter() - started
            import torch

            torch.set_num_threads(1)
            steps = calibrate(args.seconds)
            cold = {"sweep": sweep_once(ours, args.trials, steps, runs, "cold"),
                    "bare": bare_map_once(bare, args.trials, steps)}
            warm: dict[str, list[float]] = {"serial": [], "pool": [], "sweep": [], "bare": []}
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                pool.map(_pool_warm, range(2))
                for i in range(args.rounds):  # interleaved: a noisy neighbour hits every runner alike
                    warm["serial"].append(serial(args.trials, steps))
                    warm["pool"].append(pool_once(pool, args.trials, steps))
                    warm["sweep"].append(sweep_once(ours, args.trials, steps, runs, f"warm-{i}"))
                    warm["bare"].append(bare_map_once(bare, args.trials, steps))
    base = statistics.median(warm["serial"])
    print(f"{args.trials} trials x {base / args.trials:.3f} s of one-thread torch work (serial median "
          f"{base:.2f} s); 2 workers; warm figures are medians of {args.rounds} interleaved rounds\n")
    ceiling = statistics.median(warm["pool"])
    print(f"{'runner':36}{'start s':>9}{'wall s':>9}{'efficiency':>12}{'overhead ms/trial':>19}"
          f"{'vs ceiling':>12}")
    rows = [
        ("plain 2-process pool (ceiling)", 0.0, statistics.median(warm["pool"])),
        ("Sweep.run, embedded cluster, cold", ours_start, cold["sweep"]),
        ("Sweep.run, embedded cluster, warm", ours_start, statistics.median(warm["sweep"])),
        ("bare client.map, default, cold", bare_start, cold["bare"]),
        ("bare client.map, default, warm", bare_start, statistics.median(warm["bare"])),
    ]
    for label, start_s, wall in rows:
        efficiency = base / (2 * wall)
        overhead = (2 * wall - base) / args.trials * 1e3
        print(f"{label:36}{start_s:>9.2f}{wall:>9.2f}{efficiency:>12.3f}{overhead:>19.1f}"
              f"{ceiling / wall:>12.3f}")
    print("\nefficiency = serial / (2 x wall); overhead = (2 x wall - serial) / trials. Cold: the first run "
          "on a fresh cluster (workers still importing torch); warm: later runs on the same cluster. "
          "Sweep.run also writes a model directory and store rows for every trial. vs ceiling = pool wall / "
          "runner wall: what is left after this machine's own 2-process scaling.")


if __name__ == "__main__":
    main()
