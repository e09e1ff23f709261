"""xor with a free-text hyperparameter, importable by name (``tests.integration.tagged:TaggedXor``): the
dashboard must show whatever text a user puts in a parameter as text."""

from __future__ import annotations

from training.params import Param
from training.workloads.xor import Xor


class TaggedXor(Xor):
    """xor plus a ``tag`` parameter that changes nothing but is shown everywhere parameters are."""

    name = "tagged-xor"
    params = (*Xor.params, Param("tag", str, "plain", "free text, shown with the trial"))
