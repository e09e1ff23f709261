"""Benchmark: what a sweep costs over the work itself, against the strongest fair baselines, in one run.

Every runner runs the same trial: the ``Busy`` workload trained for one epoch by the same Trainer, its
loss fixed one-thread torch work (``--seconds`` each, calibrated here), then a step of its one-weight model
and a validation pass (``busy.train_busy``; a sweep runs it through ``run_trial``). Measured:
  * serial: the trial in this process, one after another (the trial alone);
  * a plain 2-process pool with torch already imported (the ceiling of this machine's 2-process scaling);
  * bare ``client.map`` of the trial on the embedded cluster (``cluster.open_client``: the same workers,
    settings and preload ``Sweep.run`` gets), the strongest fair Dask baseline;
  * ``Sweep.run`` on that cluster (events, store, a model directory a trial, live view, report).
Cold: a fresh cluster's first run (each cold run gets a fresh cluster of its own, bare and sweep
alternating); warm: later runs on the same cluster; medians of ``--rounds`` interleaved rounds of each.
Efficiency = serial / (2 x wall); overhead per trial = (2 x wall - serial) / trials.

With ``--trials`` of 1000 or more (e.g. ``--trials 10000 --seconds 0.01``) it measures scale instead: each
runner in a fresh process of its own on a fresh cluster, printing wall time, the client's peak RSS and (the
sweep) the run store's size, next to the ideal (serial / 2, serial measured on a sample of trials).

Not part of CI:  python tests/benchmarks/bench_sweep.py [--trials 32] [--seconds 0.2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # workers import tests.benchmarks.busy

# torch and the training package are imported inside functions: pool processes re-import this main module
# when they spawn, and a torch import there would count as start-up.
WORKLOAD = "tests.benchmarks.busy:Busy"
WORKERS = 2
SCALE_TRIALS = 1000  # from this many trials on, measure scale (one runner a process) instead


def calibrate(seconds: float) -> int:
    """Matmul steps that take ``seconds`` on one thread here."""
    from tests.benchmarks.busy import busy_work

    busy_work(50)
    start = time.perf_counter()
    busy_work(400)
    per_step = (time.perf_counter() - start) / 400
    return max(1, round(seconds / per_step))


def serial(trials: int, steps: int) -> float:
    from tests.benchmarks.busy import train_busy

    start = time.perf_counter()
    for _ in range(trials):
        train_busy(steps)
    return time.perf_counter() - start


def serial_work(trials: int, steps: int) -> float:
    """The fixed work alone (no Trainer), for the line that says what the Trainer adds to a trial."""
    from tests.benchmarks.busy import busy_work

    start = time.perf_counter()
    for _ in range(trials):
        busy_work(steps)
    return time.perf_counter() - start


def start_cluster():
    """A fresh embedded cluster as ``Sweep.run`` starts one (same workers, settings and preload)."""
    from cluster import ClusterSpec, Target, open_client

    spec = ClusterSpec(workers=WORKERS, gpus="off", dashboard_address="127.0.0.1:0")
    return open_client(Target(local=spec, preload=("training.trial", "training.loop", "tests.benchmarks.busy")))


def sweep_once(client, trials: int, steps: int, runs: str, name: str) -> float:
    from rich.console import Console

    from training.progress import LiveSweep
    from training.sweep import Sweep

    sweep = Sweep(WORKLOAD, {"trial": list(range(trials))}, params={"steps": steps}, epochs=1, name=name,
                  runs_dir=runs)
    view = LiveSweep(Console(file=io.StringIO(), width=120))  # the default view, drawn where no one looks
    start = time.perf_counter()
    with view:
        result = sweep.run(client, progress=view)
    elapsed = time.perf_counter() - start
    result.wait_for_report()  # its plots are drawn after the sweep returns: not on the next runner's time
    states = {t.state.value for t in result.trials}
    assert states == {"completed"} and len(result.trials) == trials, states
    return elapsed


def bare_map_once(client, trials: int, steps: int) -> float:
    from tests.benchmarks.busy import train_busy

    start = time.perf_counter()
    client.gather(client.map(train_busy, [steps] * trials, pure=False))
    return time.perf_counter() - start


def pool_once(pool, trials: int, steps: int) -> float:
    """The ceiling: a plain 2-process pool with torch already imported in both processes."""
    from tests.benchmarks.busy import train_busy

    start = time.perf_counter()
    pool.map(train_busy, [steps] * trials, chunksize=1)
    return time.perf_counter() - start


def _pool_warm(_: int) -> int:
    """A pool process trains one short trial (torch, the Trainer and torch._dynamo imported, as a sweep's
    workers have them), then waits, so that the other process takes the next item."""
    import torch

    from tests.benchmarks.busy import train_busy

    torch.set_num_threads(1)
    train_busy(1)
    time.sleep(0.5)
    return 0


def timed_start() -> tuple[object, object, float]:
    started = time.perf_counter()
    manager = start_cluster()
    client = manager.__enter__()
    return manager, client, time.perf_counter() - started


def compare(args: argparse.Namespace) -> None:
    """The side-by-side table: pool ceiling, bare client.map and Sweep.run, cold and warm."""
    import torch

    from tests.benchmarks.busy import train_busy

    torch.set_num_threads(1)
    steps = calibrate(args.seconds)
    train_busy(1)  # this process's first trial imports torch._dynamo: not on the serial runs' time
    runs = tempfile.mkdtemp(prefix="bench-sweep-")
    cold: dict[str, list[float]] = {"serial": [], "bare": [], "sweep": []}
    starts: dict[str, list[float]] = {"bare": [], "sweep": []}
    manager = client = None
    for i in range(args.rounds):  # each cold run on a fresh cluster of its own, bare and sweep alternating
        cold["serial"].append(serial(args.trials, steps))
        for runner in ("bare", "sweep"):
            manager, client, started = timed_start()
            starts[runner].append(started)
            cold[runner].append(bare_map_once(client, args.trials, steps) if runner == "bare"
                                else sweep_once(client, args.trials, steps, runs, f"cold-{i}"))
            if i < args.rounds - 1 or runner == "bare":
                manager.__exit__(None, None, None)
    try:  # the warm rounds: on the last sweep's cluster
        warm: dict[str, list[float]] = {"serial": [], "work": [], "pool": [], "sweep": [], "bare": []}
        with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
            pool.map(_pool_warm, range(WORKERS))
            for i in range(args.rounds):  # interleaved: a noisy neighbour hits every runner alike
                warm["serial"].append(serial(args.trials, steps))
                warm["work"].append(serial_work(args.trials, steps))
                warm["pool"].append(pool_once(pool, args.trials, steps))
                warm["bare"].append(bare_map_once(client, args.trials, steps))
                warm["sweep"].append(sweep_once(client, args.trials, steps, runs, f"warm-{i}"))
    finally:
        manager.__exit__(None, None, None)
    base, cold_base = statistics.median(warm["serial"]), statistics.median(cold["serial"])
    work = statistics.median(warm["work"])
    print(f"{args.trials} trials of {base / args.trials:.3f} s each (serial median {base:.2f} s warm, "
          f"{cold_base:.2f} s cold; of a trial, the Trainer's own step and validation take "
          f"{(base - work) / args.trials * 1e3:.1f} ms, the fixed torch work the rest); {WORKERS} workers; "
          f"medians of {args.rounds} interleaved rounds (cold: a fresh cluster for each run)\n")
    ceiling = statistics.median(warm["pool"])
    print(f"{'runner':40}{'start s':>9}{'wall s':>9}{'efficiency':>12}{'overhead ms/trial':>19}{'vs ceiling':>12}")
    rows = [
        ("plain 2-process pool (ceiling)", 0.0, ceiling, base),
        ("bare client.map, embedded, cold", statistics.median(starts["bare"]), statistics.median(cold["bare"]),
         cold_base),
        ("bare client.map, embedded, warm", 0.0, statistics.median(warm["bare"]), base),
        ("Sweep.run, embedded, cold", statistics.median(starts["sweep"]), statistics.median(cold["sweep"]),
         cold_base),
        ("Sweep.run, embedded, warm", 0.0, statistics.median(warm["sweep"]), base),
    ]
    for label, start_s, wall, work in rows:
        print(f"{label:40}{start_s:>9.2f}{wall:>9.2f}{work / (WORKERS * wall):>12.3f}"
              f"{(WORKERS * wall - work) / args.trials * 1e3:>19.1f}{ceiling / wall:>12.3f}")
    rounds = "; ".join(f"{phase} {k} " + " ".join(f"{v:.2f}" for v in vs)
                       for phase, runs_ in (("cold", cold), ("warm", warm)) for k, vs in runs_.items())
    print(f"\nrounds (s): {rounds}")
    print("start = the embedded cluster's start (workers joined and warmed up). Cold: the first run on a fresh "
          "cluster (efficiency against the serial runs of the cold rounds); warm: later runs on the same one. "
          "Sweep.run also writes store rows, a model directory per trial, results.csv and the report. "
          "vs ceiling = pool wall / runner wall.")


def scale(args: argparse.Namespace) -> None:
    """Many short trials: each runner in its own fresh process and cluster (its peak RSS is its own)."""
    import torch

    from tests.benchmarks.busy import train_busy

    torch.set_num_threads(1)
    steps = calibrate(args.seconds)
    train_busy(1)  # this process's first trial imports torch._dynamo: not on the serial sample's time
    sample = min(args.trials, 200)
    per_trial, work = serial(sample, steps) / sample, serial_work(sample, steps) / sample
    ideal = per_trial * args.trials / WORKERS
    print(f"{args.trials} trials of {per_trial * 1e3:.1f} ms each (the Trainer's own step and validation "
          f"{(per_trial - work) * 1e3:.1f} ms of it); {WORKERS} workers; ideal wall (serial / {WORKERS}) "
          f"{ideal:.1f} s\n")
    print(f"{'runner':32}{'wall s':>9}{'vs ideal':>10}{'client CPU s':>14}{'client peak RSS MB':>20}"
          f"{'store MB':>10}")
    walls = {}
    for runner in ("bare", "sweep"):
        command = [sys.executable, __file__, "--runner", runner, "--trials", str(args.trials),
                   "--steps", str(steps)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{runner} failed:\n{done.stderr[-3000:]}")
        out = json.loads(done.stdout.splitlines()[-1])
        walls[runner] = out["wall"]
        store = f"{out['store'] / 2**20:>10.1f}" if out.get("store") else f"{'':>10}"
        label = "bare client.map, embedded" if runner == "bare" else "Sweep.run, embedded"
        print(f"{label:32}{out['wall']:>9.1f}{out['wall'] / ideal:>10.2f}{out['cpu']:>14.1f}"
              f"{out['rss'] / 2**20:>20.0f}{store}")
    print(f"\nSweep.run / bare client.map wall: {walls['sweep'] / walls['bare']:.2f}")


def run_one(args: argparse.Namespace) -> None:
    """One runner in this fresh process (scale mode): prints its wall, peak RSS and store size as JSON."""
    runs = tempfile.mkdtemp(prefix="bench-sweep-")
    with start_cluster() as client:
        before = resource.getrusage(resource.RUSAGE_SELF)
        if args.runner == "bare":
            wall, store = bare_map_once(client, args.trials, args.steps), 0
        else:
            wall = sweep_once(client, args.trials, args.steps, runs, "scale")
            store = sum(p.stat().st_size for p in Path(runs, "scale").glob("store.sqlite*"))
        after = resource.getrusage(resource.RUSAGE_SELF)  # this process: the client and the scheduler
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    rss = after.ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"wall": wall, "cpu": cpu, "rss": rss, "store": store}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=0.2, help="CPU work per trial")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds of each runner, interleaved")
    parser.add_argument("--runner", choices=("bare", "sweep"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runner:
        run_one(args)
    elif args.trials >= SCALE_TRIALS:
        scale(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
