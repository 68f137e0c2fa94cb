"""Per-layer <-> stacked parameter layouts, for checkpoints of scanned models.

Checkpoints name each layer (``bert.encoder.layer.3....``, Flax ``params/bert/encoder/layer_3/...``);
a scanned model (:mod:`jaxtune.models.layer_scan`) holds one tree ``params/bert/encoder/layer/...``
whose leaves have a leading layer axis. The family's ``to_flax`` stacks after its name map and its
``to_hf`` unstacks before it, so import and export see the per-layer names either way.

Example::

    flat = {"params/enc/layer_0/w": a0, "params/enc/layer_1/w": a1, "params/head/b": b}
    stacked = stack_layers(flat, "params/enc/layer_{i}", "params/enc/layer", num_layers=2)
    # {"params/enc/layer/w": np.stack([a0, a1]), "params/head/b": b}
    unstack_layers(stacked, "params/enc/layer", "params/enc/layer_{i}") == flat
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxtune.errors import UserError


def _per_layer_regex(per_layer: str) -> re.Pattern:
    """``"params/enc/layer_{i}"`` -> a regex of ``<prefix><i>/<rest>`` paths."""
    before, _, after = per_layer.partition("{i}")
    return re.compile(re.escape(before) + r"(\d+)" + re.escape(after) + r"/(.+)")


def stack_layers(flat: Mapping[str, Any], per_layer: str, stacked: str, num_layers: int) -> dict[str, Any]:
    """``flat`` (path -> array) with the paths ``per_layer`` (a template with ``{i}``) + ``/rest``
    of layers ``0 .. num_layers - 1`` replaced by ``stacked/rest`` holding the arrays stacked on a
    new leading axis, layer ``i`` at index ``i``. Other paths are kept. Every ``rest`` must be
    there for every layer; a layer too many or too few is a :class:`UserError` naming them.

    Example::

        >>> stack_layers({"e/l_0/w": np.zeros(2), "e/l_1/w": np.ones(2)}, "e/l_{i}", "e/l", 2)["e/l/w"].shape
        (2, 2)
    """
    pattern = _per_layer_regex(per_layer)
    out: dict[str, Any] = {}
    by_rest: dict[str, dict[int, Any]] = {}
    for path, array in flat.items():
        m = pattern.fullmatch(path)
        if m is None:
            out[path] = array
        else:
            by_rest.setdefault(m.group(2), {})[int(m.group(1))] = array
    expected = set(range(num_layers))
    for rest, layers in by_rest.items():
        if set(layers) != expected:
            extra, missing = sorted(set(layers) - expected), sorted(expected - set(layers))
            example = per_layer.format(i=(extra or missing)[0]) + "/" + rest
            raise UserError(f"cannot stack {per_layer.format(i='<i>')}/{rest} into {num_layers} layers: "
                            + "; ".join(f"{word} layer(s) {ids}" for word, ids in
                                        (("extra", extra), ("missing", missing)) if ids) + f" (e.g. {example})",
                            hint="Hint: a scanned model (scan_layers=True) needs exactly the layers of its config: fix "
                                 "the layer count in config.json, or load it unscanned (scan_layers=False).")
        out[f"{stacked}/{rest}"] = np.stack([np.asarray(layers[i]) for i in range(num_layers)])
    return out


def unstack_layers(flat: Mapping[str, Any], stacked: str, per_layer: str) -> dict[str, Any]:
    """The inverse of :func:`stack_layers`: each ``stacked/rest`` array of leading size ``L`` becomes
    ``L`` paths ``per_layer/rest`` (``{i}`` = 0 .. L-1); other paths are kept.

    Example::

        >>> sorted(unstack_layers({"e/l/w": np.zeros((2, 3))}, "e/l", "e/l_{i}"))
        ['e/l_0/w', 'e/l_1/w']
    """
    out: dict[str, Any] = {}
    prefix = stacked + "/"
    for path, array in flat.items():
        if not path.startswith(prefix):
            out[path] = array
            continue
        array = np.asarray(array)
        for i in range(array.shape[0]):
            out[f"{per_layer.format(i=i)}/{path[len(prefix):]}"] = array[i]
    return out
