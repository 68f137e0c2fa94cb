"""Error types for bad user input, and the value checks that raise them.

Every error the library raises because of what the user gave it (a config value, a rule, an
argument, a file that does not fit) is a :class:`UserError`. The ``jaxtune`` command prints such
an error as one line and exits with status 2; any other exception is a bug and keeps its traceback.

A :class:`UserError` may carry a ``config_hint``: the same advice in config-file terms, shown by the
command instead of a hint that only makes sense in Python (``allow_unused=True`` ...).

Example::

    check_number("optim.learning_rate", 0.0, low=0.0, low_open=True)
    # UserError: optim.learning_rate must be > 0, got 0.0
"""
from __future__ import annotations

import math
import numbers
from typing import Any


class UserError(ValueError):
    """Bad user input: a config value, a rule, an argument, or a file that does not fit.

    ``str(error)`` is ``message`` followed by ``hint`` (the advice for Python callers). The
    ``jaxtune`` command shows :meth:`for_config` instead: the same message with ``config_hint``
    (the advice in config-file terms) in place of ``hint`` when there is one.

    Example::

        err = UserError("rule 'x' matches no parameter.", hint="Pass allow_unused=True to keep it.",
                        config_hint="Fix or remove its pattern in optim.rules.")
        str(err)            # "rule 'x' matches no parameter. Pass allow_unused=True to keep it."
        err.for_config()    # "rule 'x' matches no parameter. Fix or remove its pattern in optim.rules."
    """

    def __init__(self, message: str, *, hint: str | None = None, config_hint: str | None = None):
        super().__init__(message if hint is None else f"{message} {hint}")
        self.message, self.hint, self.config_hint = message, hint, config_hint

    def for_config(self) -> str:
        """The message as the ``jaxtune`` command shows it (config-file advice when there is one)."""
        hint = self.config_hint if self.config_hint is not None else self.hint
        return self.message if hint is None else f"{self.message} {hint}"


def _as_scalar(value: Any) -> Any:
    """A 0-d numpy/JAX array as its Python number; anything else unchanged."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    return value


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 error: type[UserError] = UserError) -> None:
    """Raises ``error`` naming ``name`` unless ``value`` is a finite number in the given range.

    ``low``/``high`` are inclusive bounds unless ``low_open``/``high_open``; ``integer`` asks for an int.

    Example::

        check_number("optim.warmup_fraction", 0.1, low=0.0, high=1.0, high_open=True)   # passes
        check_number("train.eval_every", 0, low=1, integer=True)   # UserError: ... must be >= 1, got 0
    """
    kind = "an integer" if integer else "a number"
    value = _as_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise error(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return
    if low is not None and high is not None:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise error(f"{name} must be in {interval}, got {value!r}")
    bound = f"> {low:g}" if low_open else f">= {low:g}" if low is not None else (
        f"< {high:g}" if high_open else f"<= {high:g}")
    raise error(f"{name} must be {bound}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple, error: type[UserError] = UserError) -> None:
    """Raises ``error`` naming ``name`` and listing ``choices`` unless ``value`` is one of them.

    Example::

        check_choice("optim.schedule", "cosine", ("constant", "warmup_linear", "warmup_cosine"))
        # UserError: optim.schedule is 'cosine'; choose one of 'constant', 'warmup_linear', 'warmup_cosine'
    """
    if value not in choices:
        shown = ", ".join("null" if c is None else repr(c) for c in choices)
        raise error(f"{name} is {value!r}; choose one of {shown}")
