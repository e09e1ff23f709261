"""One rank of the torchrun baseline: the same Trainer code as `train_ddp`, launched by torchrun
(env:// rendezvous, one thread). Rank 0 prints one JSON line with its timings."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--started", type=float, required=True, help="time.time() when torchrun was called")
    parser.add_argument("--params", required=True, help="JSON hyperparameters")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.loop import Callback, Shard, build_trainer
    from training.params import resolve
    from training.workloads import get_workload

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # MASTER_ADDR/PORT, RANK, WORLD_SIZE from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()

    class FirstStep(Callback):
        at: float | None = None

        def on_batch_end(self, epoch: int, batch: int) -> None:
            self.at = self.at or time.time()

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    work = get_workload("names")
    params = resolve(work.params, json.loads(args.params), owner="names")
    trainer = build_trainer(work, params, 0, torch.device("cpu"), shard=Shard(rank, world),
                            wrap=DistributedDataParallel, reduce=reduce)
    first = FirstStep()
    trainer.train(args.epochs, first)
    dist.barrier()  # both ranks done with the collectives before either tears its process group down
    dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"first_step": first.at - args.started, "history": trainer.history}), flush=True)
    # Gloo's threads can abort the interpreter's own teardown ("terminate called without an active exception",
    # SIGABRT: torchrun then fails the run after the timings were printed; 2 of 5 runs here): the work is done.
    os._exit(0)


if __name__ == "__main__":
    main()
