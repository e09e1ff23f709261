"""Benchmark: this project's training loop against the Saturn Cloud seed's data path, on `names`.

Prints, in one run, for the seed's model (4-layer LSTM, hidden 128) and batch 4096 on the census last names:
  - data-path time per batch, no training (seed: one-hot dataset + per-sample __getitem__ + DataLoader;
    ours: a slice of the epoch permutation indexing uint8 windows, with and without the per-batch one-hot);
  - dataset memory;
  - end-to-end training samples/s over the same number of steps after warm-up;
and the ratios. Not part of CI:  python tests/benchmarks/bench_loop.py [--steps 6] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.loop import Shard, Trainer, shard_batches
from training.params import resolve
from training.workloads import get_workload
from training.workloads.names import CHARACTERS, read_names

BATCH = 4096
STR_LEN = 8
characters = list(CHARACTERS)


# ---- The seed's code (Saturn Cloud "Train a PyTorch model with a GPU"), CPU device ----
def format_training_data(pet_names):
    def get_substrings(in_str):
        in_str = in_str + "+"
        return [in_str[0:j] for j in range(1, len(in_str) + 1)]

    expanded = [get_substrings(name) for name in pet_names]
    expanded = [item for sublist in expanded for item in sublist]
    chars = [list(name) for name in expanded]
    padded = [name[-(STR_LEN + 1):] for name in chars]
    padded = [list((STR_LEN + 1 - len(c)) * "*") + c for c in padded]
    numeric = [[characters.index(char) for char in name] for name in padded]
    y = torch.tensor([name[1:] for name in numeric])
    x = torch.tensor([name[:-1] for name in numeric])
    x = torch.nn.functional.one_hot(x, num_classes=len(characters)).float()
    return x, y


class OurDataset(Dataset):
    def __init__(self, pet_names):
        self.x, self.y = format_training_data(pet_names)
        self.permute()

    def __getitem__(self, idx):
        idx = self.permutation[idx]
        return self.x[idx], self.y[idx]

    def __len__(self):
        return len(self.x)

    def permute(self):
        self.permutation = torch.randperm(len(self.x))


class SeedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(input_size=len(characters), hidden_size=128, num_layers=4, batch_first=True,
                            dropout=0.1)
        self.fc = nn.Linear(128, len(characters))

    def forward(self, x):
        output, _ = self.lstm(x)
        return self.fc(output)
# ---- end of the seed's code ----


def seed_data_path(loader: DataLoader, batches: int) -> float:
    """Median seconds to produce one batch through the seed's DataLoader."""
    times, it = [], iter(loader)
    for _ in range(batches):
        start = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def our_data_path(trainer: Trainer, batches: int, one_hot: bool) -> float:
    """Median seconds to produce one batch the way the loop does (and the model's one-hot, if asked)."""
    perm = torch.randperm(trainer.data.num_train, generator=trainer.generator)
    index = shard_batches(perm, BATCH, Shard())
    times = []
    for i in range(batches):
        start = time.perf_counter()
        (windows,) = (t[index[i]] for t in trainer.data.train)
        if one_hot:
            F.one_hot(windows[:, :-1].long(), len(CHARACTERS)).float()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seed_training(loader: DataLoader, steps: int, warmup: int) -> float:
    """Samples/s of the seed's training loop over `steps` steps after `warmup`."""
    torch.manual_seed(0)
    model = SeedModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    it = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        batch_x, batch_y = next(it)
        optimizer.zero_grad()
        loss = criterion(model(batch_x).transpose(1, 2), batch_y)
        loss.backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - start)


def our_training(trainer: Trainer, steps: int, warmup: int) -> float:
    """Samples/s of the loop's own step (Trainer._run_batch) on batches it slices itself."""
    perm = torch.randperm(trainer.data.num_train, generator=trainer.generator)
    index = shard_batches(perm, BATCH, Shard())
    trainer.trained.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        trainer._run_batch(tuple(t[index[i]] for t in trainer.data.train))
    return steps * BATCH / (time.perf_counter() - start)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.element_size() * t.nelement() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40, help="batches timed for the data path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    names = read_names("", "last", 0)
    start = time.perf_counter()
    dataset = OurDataset(names)
    seed_build = time.perf_counter() - start
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)

    work = get_workload("names")
    params = resolve(work.params, {"corpus": "last", "val_fraction": 0.01}, owner="names")
    start = time.perf_counter()
    data = work.load_data(params, 0)
    our_build = time.perf_counter() - start
    torch.manual_seed(0)
    trainer = Trainer(work, params, data, device=torch.device("cpu"))

    seed_mem, our_mem = nbytes(dataset.x, dataset.y), nbytes(*data.train, *data.val)
    seed_batch = seed_data_path(loader, args.batches)
    our_batch = our_data_path(trainer, args.batches, one_hot=False)
    our_batch_oh = our_data_path(trainer, args.batches, one_hot=True)
    # Alternate the two sides so a noisy neighbour on this shared machine hits both alike.
    seed_runs, our_runs = [], []
    for _ in range(args.rounds):
        seed_runs.append(seed_training(loader, args.steps, args.warmup))
        our_runs.append(our_training(trainer, args.steps, args.warmup))
    seed_sps, our_sps = statistics.median(seed_runs), statistics.median(our_runs)

    print(f"names, census last names ({len(names):,} names, {len(dataset):,} seed windows), batch {BATCH}, "
          f"{args.threads} torch threads, median of {args.rounds} alternating rounds of {args.steps} timed steps "
          f"after {args.warmup} warm-up\n")
    rows = [
        ("dataset build (s)", seed_build, our_build, seed_build / our_build),
        ("dataset memory (MB)", seed_mem / 1e6, our_mem / 1e6, seed_mem / our_mem),
        ("data path per batch (ms)", seed_batch * 1e3, our_batch * 1e3, seed_batch / our_batch),
        ("  ours incl. one-hot (ms)", seed_batch * 1e3, our_batch_oh * 1e3, seed_batch / our_batch_oh),
        ("train samples/s", seed_sps, our_sps, our_sps / seed_sps),
    ]
    print(f"{'':28}{'seed':>12}{'dask-train':>12}{'ratio':>10}")
    for label, seed_value, ours, ratio in rows:
        print(f"{label:28}{seed_value:>12.3f}{ours:>12.3f}{ratio:>9.2f}x")
    print("\nratio: seed/ours for time and memory, ours/seed for samples/s (higher is better everywhere)")


if __name__ == "__main__":
    main()
