"""XLA ops of a BERT-family training step sorted into what they compute, for the CPU profile
(benchmarks/cpu_profile.py): each op's name in a profiler trace is looked up in the compiled HLO,
whose metadata names the jaxtune/Flax source it came from.

Example::

    sources = hlo_sources(compiled.as_text())
    jax_category("ynn_fusion.3", sources["ynn_fusion.3"][0])    # e.g. "matmul, forward"
"""
from __future__ import annotations

import re

CATEGORIES = ["matmul, forward", "matmul, gradients", "embeddings (lookup and gradient)", "dropout random bits",
              "dropout apply", "softmax", "layer norm", "GELU", "AdamW update", "norms and finiteness checks",
              "copies and transposes", "other"]


def hlo_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (its ``op_name`` metadata, the start of its definition).

    Example::

        >>> hlo_sources('  %copy.3 = f32[2]{0} copy(%p), metadata={op_name="jit(step)/add"}')["copy.3"][0]
        'jit(step)/add'
    """
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*)", line)
        if m:
            op = re.search(r'op_name="([^"]*)"', m.group(2))
            out[m.group(1)] = (op.group(1) if op else "", m.group(2)[:200])
    return out


def jax_category(name: str, source: str) -> str:
    """The category (one of :data:`CATEGORIES`) of one XLA op, from its name and the source path
    in its metadata.

    Example::

        >>> jax_category("ynn_fusion.7", "jit(step)/transpose(jvp(Bert))/bert/encoder/layer_0/output/dense/dot_general")
        'matmul, gradients'
    """
    dot = name.startswith(("ynn_fusion", "dot", "xnn_fusion")) and "dot_general" in source
    if dot:
        return "matmul, gradients" if "transpose(" in source else "matmul, forward"
    if "_bernoulli" in source or "_uniform" in source or "random_bits" in source or "threefry" in source:
        return "dropout random bits"
    if "word_embeddings" in source or "embeddings/" in source and "transpose(" in source:
        return "embeddings (lookup and gradient)"
    if "erf" in source or "gelu" in source:
        return "GELU"
    if "LayerNorm" in source or "layer_norm" in source:
        return "layer norm"
    if "softmax" in source or "reduce_max" in source or "/exp" in source:
        return "softmax"
    if "reduce_sum" in source and "bert/" not in source:
        return "norms and finiteness checks"
    if "bert/" not in source and "classifier" not in source and source.startswith("jit(step)/"):
        return "AdamW update"
    if "select_n" in source or "dropout" in source:
        return "dropout apply"
    if name.startswith(("copy", "transpose")) or "transpose" in name:
        return "copies and transposes"
    return "other"
