"""What a ``jt.lora`` rule says about the factors it adds (:class:`LoraSpec`), and its checks.

Example::

    check_lora(LoraSpec(8, 16.0))   # LoraSpec(rank=8, alpha=16.0, dropout=0.0)
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxtune.errors import UserError, check_number


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What a :func:`jaxtune.lora` rule says about the factors: rank, ``alpha`` (the update is
    scaled by ``alpha / rank``, as in PEFT) and ``dropout`` on the LoRA branch's input in training."""

    rank: int
    alpha: float
    dropout: float = 0.0

    @property
    def scale(self) -> float:
        """``alpha / rank``: the factor the low-rank update ``A @ B`` is multiplied by."""
        return float(self.alpha) / self.rank


def check_lora(spec: Any, where: str = "lora", error: type[UserError] = UserError) -> LoraSpec:
    """A :class:`LoraSpec`, or a config's ``lora`` (an object with ``rank``, ``alpha``, ``dropout``;
    ``alpha`` None means ``2 * rank``, as in :func:`jaxtune.lora`), checked; returns the spec.

    Example::

        check_lora(LoraSpec(8, 16.0))   # LoraSpec(rank=8, alpha=16.0, dropout=0.0)
    """
    if not isinstance(spec, LoraSpec):
        if not all(hasattr(spec, f) for f in ("rank", "alpha", "dropout")):
            raise error(f"{where} is {spec!r}; use jt.lora(rank=..., alpha=...) (config: lora: {{rank: 8, alpha: 16}})")
        check_number(f"{where}.rank", spec.rank, low=1, integer=True, error=error)
        spec = LoraSpec(spec.rank, 2 * spec.rank if spec.alpha is None else spec.alpha, spec.dropout)
    check_number(f"{where}.rank", spec.rank, low=1, integer=True, error=error)
    check_number(f"{where}.alpha", spec.alpha, low=0.0, low_open=True, error=error)
    check_number(f"{where}.dropout", spec.dropout, low=0.0, high=1.0, high_open=True, error=error)
    return spec
