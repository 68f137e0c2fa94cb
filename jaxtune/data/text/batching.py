"""Length buckets and batching: examples padded to the smallest of a few lengths, so a jitted step
compiles once per bucket instead of once per length.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

from jaxtune.data.text.tokenizer import IGNORE_INDEX

#: Padding value per field name; ``input_ids`` pads with the tokenizer's pad id (passed in).
DEFAULT_PAD_VALUES: Mapping[str, int] = {
    "attention_mask": 0,
    "token_type_ids": 0,
    "labels": IGNORE_INDEX,
    "decoder_attention_mask": 0,
}


def length_buckets(max_length: int, *, min_length: int = 16) -> tuple[int, ...]:
    """Powers of two from ``min_length`` up to ``max_length`` (always included).

    A jitted step sees at most ``len(length_buckets(...))`` sequence lengths, so it compiles at
    most that many times, while short batches are not padded to ``max_length``.

    Example:
        >>> length_buckets(384, min_length=32)
        (32, 64, 128, 256, 384)
    """
    if min_length < 1 or max_length < min_length:
        raise ValueError(
            f"need 1 <= min_length <= max_length, got min_length={min_length}, "
            f"max_length={max_length}."
        )
    buckets = []
    length = 1 << (int(min_length) - 1).bit_length()
    while length < max_length:
        buckets.append(length)
        length *= 2
    buckets.append(int(max_length))
    return tuple(buckets)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket that holds ``length`` tokens.

    Example:
        >>> bucket_for(40, (16, 32, 64))
        64
    """
    for bucket in sorted(buckets):
        if length <= bucket:
            return int(bucket)
    raise ValueError(
        f"a sequence of {length} tokens exceeds the largest bucket {max(buckets)}; tokenise with "
        f"max_length <= {max(buckets)} or add a larger bucket."
    )


def _pad_value(field: str, pad_token_id: int, pad_values: Mapping[str, int]) -> int:
    if field == "input_ids":
        return pad_token_id
    if field in pad_values:
        return pad_values[field]
    raise KeyError(
        f"no padding value for sequence field {field!r}; pass pad_values={{{field!r}: ...}}."
    )


def pad_batch(
    examples: Sequence[Mapping[str, np.ndarray]],
    buckets: Sequence[int],
    *,
    pad_token_id: int,
    batch_size: int | None = None,
    pad_values: Mapping[str, int] | None = None,
    field_buckets: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Stacks examples into a batch, padding each sequence field to its length bucket.

    Every 1-D field is padded to :func:`bucket_for` of its longest value in the batch (fields of
    equal length, like ``input_ids`` and ``attention_mask``, land in the same bucket); 0-d
    fields (class labels, answer positions) are stacked. With ``batch_size``, a short batch is
    filled with padding rows and a boolean ``example_mask`` field (``True`` for real rows) is
    always added, so the last batch has the same shapes as the others.

    Args:
      examples: per-example dicts, all with the same fields.
      buckets: allowed sequence lengths.
      pad_token_id: padding id for ``input_ids`` (``tokenizer.pad_token_id``).
      batch_size: fixed number of rows; ``None`` keeps ``len(examples)``.
      pad_values: padding per field, over :data:`DEFAULT_PAD_VALUES`.
      field_buckets: buckets for particular fields (e.g. ``{"labels": (8, 16, 32)}`` for T5
        targets).

    Example:
        >>> batch = pad_batch([{"input_ids": np.array([5, 6, 7])}], (4, 8), pad_token_id=0)
        >>> batch["input_ids"].tolist()
        [[5, 6, 7, 0]]
    """
    if not examples:
        raise ValueError("pad_batch got no examples.")
    fields = list(examples[0])
    for index, example in enumerate(examples):
        if list(example) != fields:
            raise KeyError(
                f"example {index} has fields {sorted(example)}, expected {sorted(fields)}."
            )
    rows = len(examples) if batch_size is None else int(batch_size)
    if rows < len(examples):
        raise ValueError(f"{len(examples)} examples do not fit batch_size={batch_size}.")
    pad_values = {**DEFAULT_PAD_VALUES, **(pad_values or {})}
    field_buckets = field_buckets or {}
    batch: dict[str, np.ndarray] = {}
    for field in fields:
        values = [np.asarray(example[field]) for example in examples]
        ndim = values[0].ndim
        if any(v.ndim != ndim for v in values) or ndim > 1:
            raise ValueError(
                f"field {field!r} must be 0-d or 1-D in every example, got shapes "
                f"{sorted({v.shape for v in values})}."
            )
        if ndim == 0:
            out = np.zeros(rows, dtype=values[0].dtype)
            out[:len(values)] = values
        else:
            length = bucket_for(max(len(v) for v in values), field_buckets.get(field, buckets))
            out = np.full((rows, length), _pad_value(field, pad_token_id, pad_values),
                          dtype=values[0].dtype)
            for row, value in enumerate(values):
                out[row, :len(value)] = value
        batch[field] = out
    if batch_size is not None:
        batch["example_mask"] = np.arange(rows) < len(examples)
    return batch


def bucket_plan(lengths: Sequence[int], batch_size: int, buckets: Sequence[int], *, seed: int | None = None,
                drop_remainder: bool = False) -> list[np.ndarray]:
    """The example indices of each batch of :func:`bucket_batches` (same arguments, the examples
    given by their lengths): what goes in which batch, without building a batch.

    Example:
        >>> [chunk.tolist() for chunk in bucket_plan([3, 9, 4], 2, (4, 16))]
        [[0, 2], [1]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    rng = None if seed is None else np.random.default_rng(seed)
    by_bucket: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_bucket.setdefault(bucket_for(length, buckets), []).append(index)
    plan = []
    for bucket in sorted(by_bucket):
        members = np.asarray(by_bucket[bucket])
        if rng is not None:
            members = rng.permutation(members)
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            if len(chunk) == batch_size or not drop_remainder:
                plan.append(chunk)
    if rng is not None:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def bucket_batches(
    examples: Sequence[Mapping[str, np.ndarray]],
    batch_size: int,
    buckets: Sequence[int],
    *,
    pad_token_id: int,
    seed: int | None = None,
    drop_remainder: bool = False,
    length_field: str = "input_ids",
    pad_values: Mapping[str, int] | None = None,
    field_buckets: Mapping[str, Sequence[int]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of fixed-size batches, each drawn from examples of a single length bucket.

    Examples are grouped by the bucket of their ``length_field`` length, so little padding is
    wasted; every batch has exactly ``batch_size`` rows (short ones are filled, see
    :func:`pad_batch`, and carry ``example_mask``). The batch shapes are therefore bounded by
    the number of buckets (times the ``field_buckets`` of other fields, e.g. T5 labels); check
    with :func:`batch_shapes`.

    Args:
      examples: per-example dicts (e.g. ``Tokenized.examples``).
      batch_size: rows per batch.
      buckets: allowed lengths (:func:`length_buckets`).
      pad_token_id: padding id for ``input_ids``.
      seed: shuffles examples within buckets and the order of batches; ``None`` keeps data
        order within buckets and goes through buckets from short to long.
      drop_remainder: drop each bucket's last short batch instead of filling it.
      length_field: the field whose length picks the bucket.
      pad_values, field_buckets: as in :func:`pad_batch`.

    Example:
        >>> examples = [{"input_ids": np.ones(n, np.int32)} for n in (3, 9, 4)]
        >>> [b["input_ids"].shape for b in bucket_batches(examples, 2, (4, 16), pad_token_id=0)]
        [(2, 4), (2, 16)]
    """
    if not examples:
        raise ValueError("bucket_batches got no examples.")
    plan = bucket_plan([len(example[length_field]) for example in examples], batch_size, buckets, seed=seed,
                       drop_remainder=drop_remainder)
    for chunk in plan:
        yield pad_batch(
            [examples[i] for i in chunk], buckets, pad_token_id=pad_token_id,
            batch_size=batch_size, pad_values=pad_values, field_buckets=field_buckets,
        )


def batch_shapes(batches) -> set[tuple[tuple[str, tuple[int, ...]], ...]]:
    """The distinct ``((field, shape), ...)`` signatures in an iterable of batches.

    A jitted step compiles once per signature, so ``len(batch_shapes(...))`` is the number of
    compilations an epoch will cause.

    Example:
        >>> batch_shapes([{"x": np.zeros((2, 4))}, {"x": np.zeros((2, 4))}])
        {(('x', (2, 4)),)}
    """
    return {tuple(sorted((k, tuple(np.shape(v))) for k, v in batch.items())) for batch in batches}
