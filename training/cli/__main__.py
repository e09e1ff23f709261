"""``python -m training.cli``: the same as the ``dask-train`` command."""

from training.cli import main

if __name__ == "__main__":
    main()
