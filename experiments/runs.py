"""What the experiments share: the family of a model fine-tuned over training-set sizes (config,
overrides, sizes, learning rates), its step budget and protocol line, the seeded batch order of a
run, and the per-cell result cache (:class:`Cells`).

``experiments/pretrained_vs_scratch.py`` (experiment 1) and ``experiments/freezing.py`` (experiment
2) both drive MobileNetV2 on MNIST and MiniLM on tweets this way.

Example::

    family = Family("minilm", "text", "tweets_minilm.yaml", ("data.max_length=48",), (200, 1600), (1e-4, 3e-4))
    steps_for(200, family)     # the step budget of every strategy at n=200
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from typing import Callable

import numpy as np

import jaxtune as jt
from protocol import compute_summary, cpu_description

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTEND = 2   # how many learning rates a grid may grow past its edge (``member_trainer.extend_past_edges``)
EXTEND_TEXT = (f"when the chosen rate is the grid's lowest or highest, the next rate of the 1-3-10 sequence beyond "
               f"it (at the chosen decay, if any) runs with the first seed and the choice is made again, up to "
               f"{EXTEND} times")


@dataclasses.dataclass(frozen=True)
class Family:
    """One model of an experiment: its config, overrides, sizes, learning rates and step budget."""

    name: str
    group: str                          # "cnn" or "text" (--only)
    config: str                         # under experiments/configs
    overrides: tuple[str, ...]
    sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    batch_size: int = 32
    epochs: int = 3
    min_steps: int = 100
    evals: int = 8
    recompute_bn: bool = False          # CNNs: batch-norm statistics re-estimated on the training examples
                                        # before every evaluation (MemberTrainer)


def bn_key(family: Family) -> list:
    """What batch-norm re-estimation adds to a cell's cache key: nothing when off (older cells keep their
    names)."""
    return ["recompute_bn"] if family.recompute_bn else []


def steps_for(n: int, family: Family) -> int:
    """The step budget of every strategy at ``n`` training examples: ``max(min_steps, epochs x n / batch)``.

    Example::

        >>> steps_for(200, Family("m", "text", "c.yaml", (), (200,), (1e-4,), batch_size=16, epochs=1, min_steps=60))
        60
    """
    return max(family.min_steps, family.epochs * math.ceil(n / family.batch_size))


def describe(family: Family, same_for: str) -> str:
    """The protocol line of ``family`` up to its learning rates: config, overrides, sizes, batch, step
    budgets (the same for ``same_for``: e.g. "every strategy") and validations per run.

    Example::

        >>> describe(Family("m", "text", "c.yaml", ("data.max_length=40",), (100,), (1e-4,), batch_size=16,
        ...                 min_steps=32), "every strategy")[:44]
        '- `m`: `experiments/configs/c.yaml` (its opt'
    """
    budgets = ", ".join(f"{steps_for(n, family)} at n={n:,}" for n in family.sizes)
    return (f"- `{family.name}`: `experiments/configs/{family.config}` (its optimizer, schedule, warm-up and weight "
            f"decay) with {', '.join(f'`{o}`' for o in family.overrides)}; n in "
            f"{', '.join(f'{n:,}' for n in family.sizes)}; batch {family.batch_size}; steps per run, the same for "
            f"{same_for}: {budgets}; {family.evals} validations per run"
            + ("; before each, every trained batch-norm layer's statistics are re-estimated on the run's training "
               "examples (`jt.batch_statistics`)" if family.recompute_bn else ""))


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """``[steps, batch_size]`` row indices: epoch after epoch of permutations of ``range(n)``
    (epoch ``e`` seeded by ``jt.epoch_seed(seed, e)``), cut into batches.

    Example::

        >>> batch_order(5, 2, 3, 0).shape
        (3, 2)
    """
    needed, epochs = steps * batch_size, []
    while sum(len(e) for e in epochs) < needed:
        epochs.append(np.random.default_rng(jt.epoch_seed(seed, len(epochs))).permutation(n))
    return np.concatenate(epochs)[:needed].reshape(steps, batch_size)


def shown_path(folder: str) -> str:
    """``folder`` as a results file names it: relative to the repository root when inside it (the same
    on every machine), else as given.

    Example::

        >>> shown_path(os.path.join(REPO, "experiments", "results", "lr_warmup"))
        'experiments/results/lr_warmup'
    """
    absolute = os.path.abspath(folder)
    return os.path.relpath(absolute, REPO) if os.path.commonpath([absolute, REPO]) == REPO else folder


def cache_note(what: str, trained: int, read_seconds: list, folder: str, read_machines: list = ()) -> str:
    """The run line's account of a per-run cache: how many ``what`` were trained now and read from
    ``folder``, with the read ones' training time (``read_seconds``, None where a record has none) and
    the processors that computed them (``read_machines``, :func:`processors`).

    Example::

        >>> cache_note("runs", 1, [60.0, 120.0], "/tmp/c")
        '1 runs trained now, 2 read from the cache `/tmp/c` (trained in 3.0 min)'
        >>> cache_note("runs", 0, [60.0, 60.0], "/tmp/c", ["AMD EPYC (x86_64: avx2)"] * 2)
        '0 runs trained now, 2 read from the cache `/tmp/c` (trained in 2.0 min on AMD EPYC (x86_64: avx2))'
        >>> cache_note("runs", 0, [60.0, None], "/tmp/c")
        '0 runs trained now, 2 read from the cache `/tmp/c` (1 of them without a recorded training time)'
    """
    note = f"{trained} {what} trained now, {len(read_seconds)} read from the cache `{shown_path(folder)}`"
    unrecorded = sum(s is None for s in read_seconds)
    where = processors(read_machines) if any(read_machines) else ""
    if unrecorded:
        note += f" ({unrecorded} of them without a recorded training time{f'; trained {where}' if where else ''})"
    elif read_seconds:
        note += f" (trained in {sum(read_seconds) / 60:.1f} min{f' {where}' if where else ''})"
    return note


def write_json(path: str, record: dict) -> None:
    """``record`` as sorted, indented JSON at ``path`` (numpy scalars as floats): a rerun's diff shows
    which numbers moved."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=float)


def processors(machines: list) -> str:
    """Which processors computed a cache's cells (each cell's ``"machine"``, None where it has none),
    with counts when there is more than one.

    Example::

        >>> processors(["AMD EPYC (x86_64: avx2, fma)"] * 3)
        'on AMD EPYC (x86_64: avx2, fma)'
        >>> processors(["A (x86_64: avx2)", "A (x86_64: avx2)", None])
        'on A (x86_64: avx2): 2, on a processor they do not record: 1'
    """
    counts = Counter(machines)
    if len(counts) == 1 and None not in counts:
        return f"on {machines[0]}"
    return ", ".join(f"on {m or 'a processor they do not record'}: {k}"
                     for m, k in sorted(counts.items(), key=lambda mk: (mk[0] is None, mk[0] or "")))


ROUNDING_RTOL = 1e-4   # how far a cell trained again on another processor may move and still agree with its file


def relative_difference(a, b) -> float:
    """The largest relative difference ``|x - y| / max(|x|, |y|)`` between the numbers of two JSON
    values of the same shape (0 where they are equal, NaN equal to NaN); ``inf`` where anything else
    differs: a string, a boolean, an integer, a length, a key.

    Example::

        >>> relative_difference({"loss": 0.5, "val": [0.25, 1.0]}, {"loss": 0.50001, "val": [0.25, 1.0]}) < 2e-5
        True
        >>> relative_difference({"steps": 464}, {"steps": 463})
        inf
    """
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if number(a) and number(b) and float in (type(a), type(b)):      # two integers must be equal
        if a == b or (math.isnan(a) and math.isnan(b)):
            return 0.0
        return abs(a - b) / max(abs(a), abs(b)) if math.isfinite(a) and math.isfinite(b) else math.inf
    if isinstance(a, dict) and isinstance(b, dict):
        return max((relative_difference(a[k], b[k]) if k in b else math.inf for k in a), default=0.0) if (
            set(a) == set(b)) else math.inf
    if isinstance(a, list) and isinstance(b, list):
        return max(map(relative_difference, a, b), default=0.0) if len(a) == len(b) else math.inf
    return 0.0 if type(a) is type(b) and a == b else math.inf


def add_verify_argument(parser) -> None:
    """``--verify REGEX``: the option of every script with a :class:`Cells` cache."""
    parser.add_argument("--verify", metavar="REGEX",
                        help="train the cached cells whose label matches REGEX (e.g. 'minilm n=200') again and stop "
                             "with an error unless every number equals the cached file's (within a relative "
                             f"{ROUNDING_RTOL:g} for a cell computed on another processor)")


class CellMismatch(RuntimeError):
    """A cached cell that, trained again, gives other numbers than its file."""


class Cells:
    """The per-cell result cache of an experiment (one JSON file per cell, e.g. (model, n, strategy)):
    reads a cell when its file is there, else computes and writes it, and counts both for the
    results file's run line.

    With ``verify`` (a regular expression), a cached cell whose label it matches is trained again and
    must come out equal to its file, every number exactly (:class:`CellMismatch` otherwise): a check
    that the committed cells are what the current code computes on this machine. ``unchecked`` names
    fields that are not results (e.g. a run directory's path) and may differ; ``seconds`` and
    ``machine`` (the processor that computed the cell, :func:`protocol.cpu_description`) always may. A
    checked cell whose file does not name its processor gets this one's, just shown to compute it.
    A cell from another processor (or one its file does not name), whose vector extensions round
    differently, need not agree bit for bit: it passes when every number is within a relative
    :data:`ROUNDING_RTOL` of its file's and nothing else differs, and the run line says so apart.

    Example::

        cells = Cells("runs/freezing")
        path = cells.path("minilm", 100, "probe", [overrides, lrs, seeds])   # runs/freezing/minilm_n100_probe_<hash>
        raw = cells.get(path, lambda: train(...), "minilm n=100 probe")
        cells.note("(model, n, strategy) results")   # '1 (model, n, strategy) results trained now, 0 read ...'
    """

    @classmethod
    def for_experiment(cls, name: str, given: str | None, out: str, quick: bool, verify: str | None = None) -> "Cells":
        """The cache of experiment ``name``: ``given`` when set, else a ``runs`` folder beside the results
        file ``out`` for a ``--quick`` run, else the committed ``experiments/results/<name>``."""
        if given:
            return cls(given, verify)
        if quick:
            return cls(os.path.join(os.path.dirname(os.path.abspath(out)), "runs"), verify)
        return cls(os.path.join(REPO, "experiments", "results", name), verify)

    def __init__(self, folder: str, verify: str | None = None, unchecked: tuple[str, ...] = ()):
        self.folder, self.trained = folder, 0
        self.read_seconds, self.read_machines = [], []                  # one entry per cell read (None: unrecorded)
        self.written: list[tuple[float, str]] = []                      # (seconds, machine) of each cell trained now
        self.verify = re.compile(verify) if verify else None
        self.unchecked = {"seconds", "machine", *unchecked}
        self.verified: list[tuple[str, float]] = []                     # (label, seconds it took now)
        self.rounded: list[tuple[str, float]] = []                      # (label, largest relative difference):
                                                                         # other processors' cells within rounding
        self._checked: set[str] = set()                                  # their paths: read if asked again

    def path(self, name: str, n: int, arm: str, depends_on: list) -> str:
        """The JSON file of cell (model ``name``, ``n``, ``arm``), named by a hash of ``depends_on``: what
        its numbers depend on (overrides, grids, seeds, ...), so a changed protocol trains anew.

        Example::

            >>> Cells("runs").path("minilm", 100, "probe", [[1e-3], [0, 1, 2]])[:23]
            'runs/minilm_n100_probe_'
        """
        digest = hashlib.sha256(json.dumps(depends_on).encode()).hexdigest()[:12]
        return os.path.join(self.folder, f"{name}_n{n}_{arm}_{digest}.json")

    def get(self, path: str, compute: Callable[[], dict], label: str) -> dict:
        """The record at ``path``, or ``compute()`` (printed with ``label``, its validation values and
        seconds, then written there with its training time as ``"seconds"``)."""
        if os.path.exists(path) and not self.will_check(path, label):
            return self._read(path)
        start = time.time()
        record = compute()
        return (self._check if os.path.exists(path) else self._write)(path, record, time.time() - start, label)

    def extended_paths(self, name: str, n: int, arm: str, depends_on: list) -> tuple[str, str]:
        """The files of a cell whose grid grows past its edges: the base grid's (keyed by
        ``depends_on``) and the grown one's (keyed by it and :data:`EXTEND`)."""
        return self.path(name, n, arm, depends_on), self.path(name, n, arm, [*depends_on, "extend", EXTEND])

    def get_extended(self, paths: tuple[str, str], train: Callable[[], dict], extend: Callable[[dict], dict],
                     label: str) -> dict:
        """The grown cell at ``paths[1]``, or ``extend(base)`` where ``base`` is the base grid's record
        at ``paths[0]`` (read, or ``train()`` and written there): a grown grid reuses the runs of its
        base. One cell: its ``"seconds"`` are the base grid's and the growth's together.

        Example::

            paths = cells.extended_paths("minilm", 100, "full", key)
            raw = cells.get_extended(paths, lambda: grid_then_seeds(run, points, seeds),
                                     lambda base: extend_past_edges(run, base, seeds, EXTEND), "minilm n=100 full")
        """
        if os.path.exists(paths[1]) and self.verifying(label):
            start = time.time()
            base = train()
            if os.path.exists(paths[0]):
                self._check(paths[0], dict(base), time.time() - start, f"{label} (base grid)", count=False)
            return self._check(paths[1], extend(base), time.time() - start, label)
        if os.path.exists(paths[1]):
            return self._read(paths[1])
        start, earlier = time.time(), 0.0
        if os.path.exists(paths[0]):
            base = self._load(paths[0])
            earlier = base.get("seconds") or 0.0
        else:
            base = train()
            base["seconds"] = round(time.time() - start, 1)
            self._dump(paths[0], base)
        return self._write(paths[1], extend(base), earlier + time.time() - start, label)

    def verifying(self, label: str) -> bool:
        """Whether the cell ``label``, when cached, is trained again and checked (``verify`` matches it)."""
        return self.verify is not None and self.verify.search(label) is not None

    def will_check(self, path: str, label: str) -> bool:
        """Whether :meth:`get` of ``path`` trains the cell again to check it: its file exists, ``verify``
        matches ``label``, and it was not checked already in this invocation (then it is read)."""
        return os.path.exists(path) and path not in self._checked and self.verifying(label)

    def _check(self, path: str, record: dict, seconds: float, label: str, count: bool = True) -> dict:
        """The cached record at ``path`` after checking that ``record`` (just trained, in ``seconds``)
        equals it in every number (the ``unchecked`` fields aside)."""
        cached = self._read(path) if count else self._load(path)
        fresh = json.loads(json.dumps(record, default=float))   # as the file stores it: tuples as lists, floats
                                                                 # round-tripped, numpy scalars as floats
        same = lambda k: (json.dumps(cached.get(k), sort_keys=True)         # NaN equals NaN, as in the file;
                          == json.dumps(fresh.get(k), sort_keys=True))      # key order aside
        differ = sorted(k for k in (set(cached) | set(fresh)) - self.unchecked if not same(k))
        here, there = cpu_description(), cached.get("machine")
        worst = relative_difference({k: cached.get(k) for k in differ}, {k: fresh.get(k) for k in differ})
        if differ and there != here:
            if worst <= ROUNDING_RTOL:
                print(f"{label}: within rounding of {os.path.basename(path)}, computed on "
                      f"{there or 'a processor it does not name'} (this one: {here}): largest relative difference "
                      f"{worst:.1e} ({', '.join(differ)}), at most {ROUNDING_RTOL:g} ({seconds:.0f} s now)", flush=True)
                if count:
                    self.rounded.append((label, worst))
                    self._checked.add(path)
                return cached
        if differ:
            beyond = (f"Its largest relative difference, {worst:.1e}, is more than the {ROUNDING_RTOL:g} allowed "
                      "for rounding. " if math.isfinite(worst) else
                      "Something other than a float differs, which rounding cannot explain. ")
            machine = (f"It was computed on {there}, this machine is {here}: other vector extensions round "
                       "differently, but not that far. " + beyond if there and there != here else
                       f"It was computed on this processor ({here}), which must give it bit for bit. " if there else
                       f"It does not say which processor computed it (this one: {here}). " + beyond)
            raise CellMismatch(f"cell {label!r} ({path}) trained again differs from its file in "
                               + "; ".join(f"{k}: now {fresh.get(k)}, file {cached.get(k)}" for k in differ)
                               + ". " + machine + "The file came from other code, settings or another machine: "
                               "find the change (git log of experiments/ and jaxtune/), or delete the file to "
                               "keep the new numbers")
        print(f"{label}: verified, the same numbers as {os.path.basename(path)} ({seconds:.0f} s now, "
              f"{cached.get('seconds')} s recorded)", flush=True)
        if "machine" not in cached:   # known now: this processor computes these very numbers
            self._dump(path, cached)
            if count:
                self.read_machines[-1] = cached["machine"]
        if count:
            self.verified.append((label, round(seconds, 1)))
            self._checked.add(path)
        return cached

    def _read(self, path: str) -> dict:
        record = self._load(path)
        self.read_seconds.append(record.get("seconds"))
        self.read_machines.append(record.get("machine"))
        return record

    @staticmethod
    def _load(path: str) -> dict:
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _write(self, path: str, record: dict, seconds: float, label: str) -> dict:
        record["seconds"] = round(seconds, 1)
        val = record.get("val")
        shown = f"val {[round(v, 4) for v in val] if isinstance(val, list) else val} " if val is not None else ""
        print(f"{label}: {shown}({record['seconds']:.0f} s)", flush=True)
        self._dump(path, record)
        self.trained += 1
        self.written.append((record["seconds"], record["machine"]))
        return record

    @staticmethod
    def _dump(path: str, record: dict) -> None:
        record["machine"] = cpu_description()
        write_json(path, record)

    def shown_folder(self) -> str:
        """The cache folder as the results file names it (:func:`shown_path`)."""
        return shown_path(self.folder)

    def compute(self) -> dict:
        """What the results file's cells cost, for its sidecar (:func:`protocol.write_sidecar`): how many
        there are (read or trained now), their recorded training minutes summed, and how many each
        processor computed (``"not recorded"`` for a cell without one). A rerun that reads every cell
        gives the same dict.

        Example::

            cells.compute()   # {"results": 20, "minutes": 77.3, "processors": {"AMD EPYC (x86_64: avx2, fma)": 20}}
        """
        return compute_summary([*self.read_seconds, *(s for s, _ in self.written)],
                               [*self.read_machines, *(m for _, m in self.written)])

    def note(self, what: str) -> str:
        """``"3 <what> trained now, 17 read from the cache `<folder>` (trained in 40.2 min)"``: for the run
        line (:func:`cache_note`), and which cells ``verify`` trained again."""
        note = cache_note(what, self.trained, self.read_seconds, self.folder, self.read_machines)
        if self.verified:
            note += (f"; {len(self.verified)} of them trained again to the same numbers ("
                     + ", ".join(f"{label}: {now / 60:.1f} min" for label, now in self.verified) + ")")
        if self.rounded:
            note += (f"; {len(self.rounded)} computed on another processor trained again to numbers within a "
                     f"relative {ROUNDING_RTOL:g} of theirs (" + ", ".join(
                         f"{label}: {worst:.1e}" for label, worst in self.rounded) + ")")
        return note
