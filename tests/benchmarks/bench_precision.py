"""Benchmark: training throughput by precision, one workload, one device.

Trains the same model for the same epochs in fp32, bf16 and (on a GPU) fp16 and prints the training samples/s
of the last epoch (the first one warms up kernels and, on a GPU, TF32 or autocast paths), the ratio to fp32 and
the final validation metric. Not part of CI:
    python tests/benchmarks/bench_precision.py [--workload digits] [--param arch=cnn] [--epochs 3] [--device auto]
"""

from __future__ import annotations

import argparse

from training.loop import pick_device, train
from training.workloads import get_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--param", action="append", default=[], help="NAME=VALUE (repeatable; digits: arch=cnn)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    params = dict(p.split("=", 1) for p in args.param) or ({"arch": "cnn"} if args.workload == "digits" else {})
    device = pick_device(args.device)
    metric = get_workload(args.workload).metric
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    print(f"{args.workload} {params} on {device}, {args.epochs} epochs")
    base = None
    for precision in precisions:
        trained = train(args.workload, params, epochs=args.epochs, seed=0, device=args.device, precision=precision)
        last = trained.history[-1]
        rate = last["samples_per_s"]
        base = base or rate
        print(f"{precision:5s} {rate:12,.0f} samples/s  x{rate / base:5.2f}  {metric}={last[metric]:.4f}")


if __name__ == "__main__":
    main()
