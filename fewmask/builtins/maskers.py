"""The ``dense`` masker: no mask at all (MAML, first-order MAML, ANIL, BOIL)."""

from __future__ import annotations

from fewmask.interfaces import Backbone, Masker, Params


class DenseMasker(Masker):
    """Every weight is used as it is; there are no scores to meta-learn."""

    description = "no mask (MAML family)"

    def __init__(self) -> None:
        super().__init__()

    def attach(self, backbone: Backbone) -> None:
        """Nothing to create."""

    def masks(self) -> Params:
        return {}
