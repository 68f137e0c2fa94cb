"""The benchmark cases: models at fixed shapes, the suites that group them, and their random batches.

Example::

    >>> [c.name for c in suite_cases("smoke")]
    ['bert-tiny-s16-bs4', 't5-tiny-s16-t8-bs4', 'resnet-tiny-i32-bs4']
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxtune.hub import minilm_path
from jaxtune.models.bert import BertConfig
from jaxtune.models.resnet import ResNetConfig, resnet_config
from jaxtune.models.t5 import T5Config

MODES = ("full", "frozen_backbone", "llrd_masks", "runtime_unfreeze")
# N members in one vmapped step against N sequential runs (jaxtune.bench.members); cases with members=N.
MEMBER_MODES = ("members", "sequential")
ALL_MODES = MODES + MEMBER_MODES
SUITES = ("gpu", "cpu", "smoke")
LEARNING_RATE = 2e-5
WEIGHT_DECAY = 0.01
LAYER_DECAY = 0.9
UNFREEZING_STAGES = 4

# --------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    """One model at fixed shapes.

    Attributes:
      name: short id used in tables and ``--cases`` (e.g. ``bert-base-s128-bs32``).
      family: ``"bert"``, ``"t5"`` or ``"resnet"``.
      config: the jaxtune config of the family (random weights) — or None with ``pretrained``.
      batch_size: examples per step.
      shape: ``{"seq": S}`` (BERT), ``{"src": S, "tgt": T}`` (T5) or ``{"image": H}`` (ResNet).
      num_labels: classifier size (BERT/ResNet).
      pretrained: checkpoint directory to load instead of random weights.
      peers: PyTorch variants to run beside it (``"eager"``, ``"compile"``).
      modes: the jaxtune modes to run (a subset of :data:`ALL_MODES`).
      members: N of the member modes (:data:`MEMBER_MODES`; 0 for a case without them).
      est_compile_s: conservative seconds of one jaxtune compilation on the suite's device (the unit
        of :func:`estimate_case_s`).
      est_step_s: conservative seconds of one step of the case's slowest contestant.
    """

    name: str
    family: str
    config: Any
    batch_size: int
    shape: dict
    num_labels: int | None = None
    pretrained: str | None = None
    peers: tuple[str, ...] = ("eager",)
    modes: tuple[str, ...] = MODES
    est_compile_s: float = 5.0
    est_step_s: float = 0.05
    members: int = 0

    @property
    def shape_str(self) -> str:
        return "x".join(f"{k}{v}" for k, v in self.shape.items())


def _bert_config(**overrides):
    return BertConfig(**overrides)


def _minilm_config(**overrides):
    """all-MiniLM-L6-v2's shapes: 6 layers, hidden 384, 12 heads, intermediate 1536."""
    return BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                      **overrides)


def _t5_config(**overrides):
    return T5Config(**overrides)


def _resnet_config(depth: int | None = None, **fields):
    return resnet_config(depth, num_labels=1000) if depth else ResNetConfig(**fields)


# The smoke suite runs every mode (members: 2) on BERT only: it checks the harness, in about a minute.
SMOKE_MODES = ("full", "frozen_backbone")


def suite_cases(suite: str) -> list[Case]:
    """The cases of a suite (``gpu``, ``cpu`` or ``smoke``).

    BERT cases of the GPU suite use ``attention_probs_dropout_prob=0`` on both sides, so both can
    train on fused attention kernels; hidden dropout stays 0.1.

    Example::

        >>> [c.name for c in suite_cases("smoke")]
        ['bert-tiny-s16-bs4', 't5-tiny-s16-t8-bs4', 'resnet-tiny-i32-bs4']
    """
    if suite == "gpu":
        # Ordered so that a run cut short by --time-budget-s has the targets' cases first: the
        # torch.compile and compile-time targets (BERT bs 128), T5-small, ResNet-50, then the rest.
        # Estimates: rough H100 guesses, on the safe side (see estimate_case_s).
        bert_base = _bert_config(attention_probs_dropout_prob=0.0)
        bert_peers = ("eager", "compile")
        return [
            Case("bert-base-s128-bs128", "bert", bert_base, 128, {"seq": 128}, 2, peers=bert_peers,
                 est_compile_s=30, est_step_s=0.12),
            Case("t5-small-s256-t64-bs64", "t5", _t5_config(), 64, {"src": 256, "tgt": 64},
                 est_compile_s=30, est_step_s=0.08),
            Case("resnet50-i224-bs256", "resnet", _resnet_config(50), 256, {"image": 224}, 1000,
                 est_compile_s=45, est_step_s=0.3),
            Case("bert-base-s128-bs32", "bert", bert_base, 32, {"seq": 128}, 2, peers=bert_peers,
                 est_compile_s=30, est_step_s=0.05),
            Case("bert-base-s512-bs32", "bert", bert_base, 32, {"seq": 512}, 2, peers=bert_peers,
                 est_compile_s=30, est_step_s=0.15),
            # Members: 8 variants in one vmapped step against 8 sequential runs (random weights).
            Case("minilm-l6-s128-bs32-n8", "bert", _minilm_config(attention_probs_dropout_prob=0.0), 32,
                 {"seq": 128}, 2, peers=(), modes=MEMBER_MODES, members=8, est_compile_s=15, est_step_s=0.15),
            Case("bert-base-s128-bs32-n8", "bert", bert_base, 32, {"seq": 128}, 2, peers=(), modes=MEMBER_MODES,
                 members=8, est_compile_s=40, est_step_s=0.4),
        ]
    if suite == "cpu":
        return [Case("minilm-l6-s64-bs16", "bert", None, 16, {"seq": 64}, 2, pretrained=str(minilm_path()),
                     modes=ALL_MODES, members=4, est_compile_s=20, est_step_s=2.0)]
    if suite == "smoke":
        tiny_bert = _bert_config(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, max_position_embeddings=64)
        tiny_t5 = _t5_config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2,
                             num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16)
        tiny_resnet = _resnet_config(embedding_size=8, hidden_sizes=(16, 32), depths=(1, 1), num_labels=10)
        return [
            Case("bert-tiny-s16-bs4", "bert", tiny_bert, 4, {"seq": 16}, 2, modes=ALL_MODES, members=2),
            Case("t5-tiny-s16-t8-bs4", "t5", tiny_t5, 4, {"src": 16, "tgt": 8}, peers=(), modes=SMOKE_MODES),
            Case("resnet-tiny-i32-bs4", "resnet", tiny_resnet, 4, {"image": 32}, 10, peers=(), modes=SMOKE_MODES),
        ]
    raise ValueError(f"unknown suite {suite!r}; choose one of {SUITES}")


def make_batch(case: Case, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random host batch of a case (NumPy; token ids avoid the special ids below 2 / 1000).

    Example::

        >>> sorted(make_batch(suite_cases("smoke")[0], 99))
        ['attention_mask', 'input_ids', 'labels', 'token_type_ids']
    """
    rng = np.random.default_rng(seed)
    b = case.batch_size
    if case.family == "bert":
        s = case.shape["seq"]
        low = 1000 if vocab_size > 2000 else 1
        return {"input_ids": rng.integers(low, vocab_size, (b, s)).astype(np.int32),
                "attention_mask": np.ones((b, s), np.int32), "token_type_ids": np.zeros((b, s), np.int32),
                "labels": rng.integers(0, case.num_labels, (b,)).astype(np.int32)}
    if case.family == "t5":
        src, tgt = case.shape["src"], case.shape["tgt"]
        return {"input_ids": rng.integers(2, vocab_size, (b, src)).astype(np.int32),
                "attention_mask": np.ones((b, src), np.int32),
                "labels": rng.integers(2, vocab_size, (b, tgt)).astype(np.int32)}
    if case.family == "resnet":
        h = case.shape["image"]
        return {"images": rng.standard_normal((b, h, h, 3), np.float32),
                "labels": rng.integers(0, case.num_labels, (b,)).astype(np.int32)}
    raise ValueError(f"case {case.name}: unknown family {case.family!r}")


def with_attention(case: Case, implementation: str | None) -> Case:
    """``case`` with its transformer config's ``attention_implementation`` set (``None``: as is).

    Example::

        >>> with_attention(suite_cases("smoke")[0], "xla").config.attention_implementation
        'xla'
    """
    if implementation is None or case.config is None or not hasattr(case.config, "attention_implementation"):
        return case
    return dataclasses.replace(case, config=dataclasses.replace(case.config, attention_implementation=implementation))



def with_members(case: Case, n: int | None) -> Case:
    """``case`` with ``n`` members in its member modes (a ``-nK`` name suffix follows); as is for
    ``None`` or a case without member modes.

    Example::

        >>> with_members(suite_cases("smoke")[0], 3).members
        3
    """
    if n is None or not case.members:
        return case
    name = case.name[:case.name.rindex("-n")] + f"-n{n}" if case.name.rsplit("-", 1)[-1] == f"n{case.members}" \
        else case.name
    return dataclasses.replace(case, name=name, members=n)
