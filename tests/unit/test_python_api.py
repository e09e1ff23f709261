"""The Python API's entry points refuse what is not a Dask client, naming it, before anything starts."""

from __future__ import annotations

import pytest

import cluster
from training import Sweep, train_ddp


@pytest.mark.parametrize("call", [
    lambda client: train_ddp(client, "xor", epochs=1),
    lambda client: Sweep("xor", {"lr": [0.1]}, epochs=1).run(client),
    lambda client: Sweep("xor", {"lr": [0.1]}, epochs=1).submit(client),
], ids=["train_ddp", "Sweep.run", "Sweep.submit"])
def test_a_context_manager_passed_as_the_client_says_how_to_use_it(call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"is not a Dask Client: open_client\(\) is a context manager, use "
                                        r"`with cluster.open_client\(\) as client:`"):
        call(cluster.open_client())
    with pytest.raises(TypeError, match=r"client='tcp://10.0.0.5:8786' is not a Dask Client\. Pass a "):
        call("tcp://10.0.0.5:8786")
    assert list(tmp_path.iterdir()) == [], "nothing is written before the client is checked"
