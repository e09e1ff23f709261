"""Benchmark: DDP on `names` with the seed's model (4-layer LSTM, hidden 128) and global batch 4096.

Prints, in one run, samples/s after warm-up (the second epoch) and time from call to the end of the first
step for:
  (1) single-process training with 2 torch threads,
  (2) 2 ranks launched by torchrun, 1 thread each, the same training code (Trainer with DDP and gloo),
  (3) 2 ranks through `train_ddp` on the embedded 2-worker cluster (started beforehand; its start time is
      shown on its own line),
and the ratios; torchrun and train_ddp alternate over ``--rounds`` rounds and medians are shown.
Not part of CI:  python tests/benchmarks/bench_ddp.py [--max-names 12000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
# torch and training are imported inside functions: spawned workers re-import this main module.


def single(params: dict, epochs: int) -> tuple[float, float]:
    import torch

    from training.loop import Callback, build_trainer
    from training.params import resolve
    from training.workloads import get_workload

    class FirstStep(Callback):
        at: float | None = None

        def on_batch_end(self, epoch: int, batch: int) -> None:
            self.at = self.at or time.time()

    torch.set_num_threads(2)
    started = time.time()
    work = get_workload("names")
    trainer = build_trainer(work, resolve(work.params, params, owner="names"), 0, torch.device("cpu"))
    first = FirstStep()
    trainer.train(epochs, first)
    return trainer.history[-1]["samples_per_s"], first.at - started


def torchrun(params: dict, epochs: int) -> tuple[float, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), str(ROOT / "tests" / "benchmarks" / "ddp_torchrun_rank.py"),
         "--started", str(started), "--params", json.dumps(params), "--epochs", str(epochs)],
        capture_output=True, text=True, timeout=1800, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"},
    )
    if out.returncode != 0:  # say why (it failed once in two runs here, and check=True showed nothing of it)
        raise RuntimeError(f"torchrun exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("{"))
    report = json.loads(line)
    return report["history"][-1]["samples_per_s"], report["first_step"]


def dask_ddp(client, params: dict, epochs: int, runs: str) -> tuple[float, float]:
    from training.ddp import train_ddp

    result = train_ddp(client, "names", params, epochs=epochs, workers=2, runs_dir=runs,
                       name=f"bench-{time.time_ns()}")
    return result.history[-1]["samples_per_s"], result.first_step_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-names", type=int, default=12000, help="census last names used (0: all 88,799)")
    parser.add_argument("--epochs", type=int, default=2, help="samples/s is the last epoch's")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of torchrun and train_ddp, alternating")
    args = parser.parse_args()
    params = {"corpus": "last", "max_names": args.max_names, "batch_size": 4096, "lr": 1e-3}

    from cluster import ClusterSpec, Target, open_client

    runs = tempfile.mkdtemp(prefix="bench-ddp-")
    started = time.perf_counter()
    rounds: dict[str, list[tuple[float, float]]] = {"torchrun": [], "train_ddp": []}
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"),
                            preload=("training.rank",))) as client:  # returns once the workers are warm
        cluster_start = time.perf_counter() - started
        for i in range(args.rounds):  # alternating, so a noisy neighbour hits both alike; order flips each round
            order = ("torchrun", "train_ddp") if i % 2 == 0 else ("train_ddp", "torchrun")
            for runner in order:
                rounds[runner].append(torchrun(params, args.epochs) if runner == "torchrun"
                                      else dask_ddp(client, params, args.epochs, runs))
    base = single(params, args.epochs)

    def median(runner: str, index: int) -> float:
        return statistics.median(r[index] for r in rounds[runner])

    tr = (median("torchrun", 0), median("torchrun", 1))
    ours = (median("train_ddp", 0), median("train_ddp", 1))
    print(f"names, census last names (first {args.max_names or 88799:,}), seed model, global batch 4096, "
          f"{args.epochs} epochs; samples/s of the last epoch; medians of {args.rounds} alternating rounds\n")
    print(f"{'runner':40}{'samples/s':>12}{'x single':>10}{'x torchrun':>12}{'first step s':>14}")
    for label, (sps, first) in [("single process, 2 threads", base), ("torchrun, 2 ranks x 1 thread", tr),
                                ("train_ddp, 2 ranks on embedded cluster", ours)]:
        print(f"{label:40}{sps:>12,.0f}{sps / base[0]:>10.2f}{sps / tr[0]:>12.2f}{first:>14.2f}")
    for runner, values in rounds.items():
        print(f"{runner} rounds: samples/s " + " ".join(f"{v[0]:,.0f}" for v in values)
              + "; first step s " + " ".join(f"{v[1]:.2f}" for v in values))
    print(f"\n(embedded cluster start, before the first call, workers warmed up: {cluster_start:.2f} s; "
          "torchrun's first step counts from its launch: process start, torch import, rendezvous)")


if __name__ == "__main__":
    main()
