"""Freezing strategies over training-set size: which part of a pretrained network should train, and when?

Experiment 2 of issue #15, under the protocol of ``experiments/protocol.py``. Five strategies, each a
rule table or optimizer setting of the runner, fine-tune the same pretrained network:

* ``probe``      linear probe: the new head alone; the backbone frozen (structural: no backward
                 through it), its batch norm keeping the ImageNet running statistics;
* ``top2``       the top two layers below the head (MiniLM: encoder layers 4-5 and the pooler;
                 MobileNetV2: the last inverted-residual block and the final 1x1 conv) and the head;
                 everything below frozen, batch norm there included;
* ``full``       every weight, one learning rate (``optim.layer_decay: null``);
* ``llrd``       every weight, layer-wise learning-rate decay (``optim.layer_decay``: the learning
                 rate x decay^(head id - layer id)), the decay (0.7, 0.8 or 0.9) chosen on validation;
* ``gradual``    gradual unfreezing (``optim.unfreezing: structural``): 4 stages of layer ids, top
                 first, a new stage every quarter of the steps (frozen layers' batch norm frozen).

Every strategy's grid (learning rates; for LLRD, decays x learning rates) runs with seed 0; the
point with the best seed-0 validation accuracy is chosen (``protocol.select_on_validation`` over
seed 0, which the protocol allows) and run with the other seeds: the test accuracy of all seeds at
the chosen point is reported. This halves the runs of a grid x seeds.

Models and data: all-MiniLM-L6-v2 on 3-class tweet sentiment (``experiments/configs/tweets_minilm.yaml``)
and torchvision's ImageNet MobileNetV2 on MNIST digits at 48x48 (``mnist_mobilenet.yaml``; the shipped
weights work there: seed 0, n=100, 32 steps reach 0.74 validation accuracy, 0.88 at 64x64), each at a
small and a larger n (the larger: the rows ``data.train_limit=n`` picks with ``data.seed`` 0; the
smaller: a seeded subset of those; the same for every seed). Protocol: per (model, n, strategy) every
seed x learning rate of the strategy's grid trains as a member of one vmapped step
(``experiments/member_trainer.py``: the runner's model loading, loss, optimizer, structural masks,
frozen batch norm and stage-fresh unfreezing, without its per-run checkpoints and plots);
``train.seed`` drives head init, data order and dropout. Before every evaluation a MobileNetV2 run
re-estimates the statistics of its training batch-norm layers on its n training digits (frozen layers
keep theirs; ``recompute_bn``, ``experiments/bn_statistics.py`` says why). Every strategy gets the same step budget per
(model, n); each run keeps its best validation-accuracy point (test evaluated there, once); each
strategy's grid point is chosen on seed-0 validation accuracy; test accuracy is reported as mean ±
sample std, with paired differences (same seed) against ``full`` and 95% t-intervals. Each (model, n,
strategy) is cached as JSON under ``--cache`` (a rerun reads it instead of training; delete it to
train again; ``--verify REGEX`` trains the cells whose label matches again and stops unless they
equal their files). Writes ``experiments/results/freezing.md``, ``.png`` and ``.json``::

    python experiments/freezing.py                    # everything: MiniLM's cells 55.7 min on 2 shared cores,
                                                      # MobileNetV2's 14.8, 2026-12-01; cells committed
    python experiments/freezing.py --only text        # MiniLM only
    python experiments/freezing.py --quick --text-model TINY_BERT --cnn-model TINY_MOBILENET \\
        --out /tmp/fz/freezing.md                     # tiny random models, a few steps (the test)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from typing import Callable

import numpy as np

import protocol
from runs import EXTEND_TEXT, Cells, Family, add_verify_argument, bn_key, describe, steps_for

HERE = os.path.dirname(os.path.abspath(__file__))
DECAYS = (0.7, 0.8, 0.9)
STAGES = 4
STRATEGIES = {
    "probe": "linear probe: the head alone, backbone frozen (frozen batch norm)",
    "top2": "the top 2 layers below the head and the head; the rest frozen (frozen batch norm)",
    "full": "every weight, uniform learning rate",
    "llrd": f"every weight, layer-wise learning-rate decay: decay in {', '.join(f'{d:g}' for d in DECAYS)} (x the "
            "learning-rate grid), chosen on validation",
    "gradual": f"gradual unfreezing (structural, stage-fresh optimizer state), {STAGES} stages of layer ids top "
               "first, a new one every quarter of the steps (frozen layers' batch norm frozen)",
}
COMPARED = ("probe", "top2", "llrd", "gradual")          # each against "full"


@dataclasses.dataclass(frozen=True)
class Model:
    """A model of the experiment: its runs (``family``: config, sizes, step budget, the learning-rate
    grid of every strategy but the probe) and the parameter paths its rule tables name."""

    family: Family
    head: str            # the new head: all a linear probe trains
    no_decay: str        # the family's default rules: no weight decay on these (biases, norm scales)
    probe_lrs: tuple[float, ...]
    max_length: int | None = None   # text: pad every batch to it (one compiled shape)

    def rules(self, strategy: str, params, layer_ids) -> list:
        """The rule table of ``strategy`` (``probe``, ``top2``, else the family's defaults) for
        ``params`` whose layer ids (``layer_ids(path)``: embeddings/stem 0, ..., head top) say what
        top2 freezes: every leaf below id top - 2.

        Example::

            FULL[1].rules("top2", params, model.layer_ids)[0]   # ('(features_0/...|...)', Settings(frozen=True))
        """
        import re

        import jaxtune as jt
        from jaxtune.rules import leaf_paths

        defaults = [(self.no_decay, jt.settings(weight_decay=0.0, name="no_decay")), (".*", jt.settings(name="decay"))]
        if strategy == "probe":
            return [(self.head, jt.settings(name="head")), (".*", jt.freeze("backbone"))]
        if strategy == "top2":
            paths = leaf_paths(params)
            top = max(int(layer_ids(p)) for p in paths)
            below = "|".join(re.escape(p) for p in paths if int(layer_ids(p)) < top - 2)
            return [(f"({below})", jt.freeze("below_top2")), *defaults]
        return defaults


# Grids widened on 2026-12-01: with two points per strategy every one of the 20 choices was at an edge. MiniLM's
# `full` chose the lowest rate and the others the highest, so its grid spans both sides; the probe's too.
# Shifted up for MobileNetV2 later that day: on (3e-4, 1e-3, 3e-3) and probe (3e-3, 1e-2, 3e-2) 8 of its 10
# strategies chose the highest rate and none the lowest.
PROBE_LRS = (3e-3, 1e-2, 3e-2)
FULL = (  # two-point grids took 43.2 min on 2 quiet cores (54 and 71 CPU-s per MiniLM / MobileNetV2 full run)
    Model(Family("minilm", "text", "tweets_minilm.yaml", ("data.max_length=40", "data.eval_limit=200",
                                                          "data.test_limit=500"),
                 (100, 500), (3e-5, 1e-4, 3e-4, 1e-3), batch_size=16, epochs=1, min_steps=32, evals=2),
          r"classifier/.*", r".*/(bias|LayerNorm/scale)", PROBE_LRS, max_length=40),
    Model(Family("mobilenet_v2", "cnn", "mnist_mobilenet.yaml", ("data.image_size=48", "data.eval_limit=200"),
                 (100, 1000), (1e-3, 3e-3, 1e-2), batch_size=32, epochs=1, min_steps=32, evals=2, recompute_bn=True),
          r"classifier_1/.*", r".*/(bias|scale)", (1e-2, 3e-2, 1e-1)),
)
QUICK_OVERRIDES = {"text": ("data.max_length=16", "data.eval_limit=24", "data.test_limit=24"),
                   "cnn": ("data.image_size=16", "data.eval_limit=24", "data.test_limit=24", "data.eval_batch_size=24")}


def quick(model: Model, path: str | None) -> Model:
    """A tiny version of ``model`` (a test of the script): two small sizes with the same 4 steps, one
    learning rate per strategy; ``path`` (a tiny checkpoint) replaces the real weights."""
    family = with_path(model, path).family
    quick_keys = {o.split("=")[0] for o in QUICK_OVERRIDES[family.group]}
    overrides = tuple(o for o in family.overrides if o.split("=")[0] not in quick_keys) + QUICK_OVERRIDES[family.group]
    family = dataclasses.replace(family, overrides=overrides, sizes=(16, 32), lrs=family.lrs[-1:], batch_size=8,
                                 min_steps=4, evals=1)
    return dataclasses.replace(model, family=family, probe_lrs=model.probe_lrs[-1:],
                               max_length=16 if model.max_length else None)


def with_path(model: Model, path: str | None) -> Model:
    """``model`` with ``model.path=path`` (another checkpoint of the family), or itself for None."""
    if path is None:
        return model
    return dataclasses.replace(model, family=dataclasses.replace(
        model.family, overrides=model.family.overrides + (f"model.path={path}",)))


def unfreeze_at(steps: int) -> list[int]:
    """The steps where unfreezing stages 1, 2, 3 begin: every quarter of ``steps``.

    Example::

        >>> unfreeze_at(100)
        [25, 50, 75]
    """
    at = [round(steps * k / STAGES) for k in range(1, STAGES)]
    if len(set(at)) != len(at) or at[0] < 1:
        raise ValueError(f"{steps} steps are too few for {STAGES} unfreezing stages; give min_steps >= {STAGES}")
    return at


def grid(model: Model, strategy: str) -> list[tuple[float, float | None]]:
    """The (learning rate, layer decay) points ``strategy`` tries on validation."""
    if strategy == "probe":
        return [(lr, None) for lr in model.probe_lrs]
    if strategy == "llrd":
        return [(lr, decay) for decay in DECAYS for lr in model.family.lrs]
    return [(lr, None) for lr in model.family.lrs]


def strategy_runner(trainer, model: Model, strategy: str, rows: np.ndarray, steps: int) -> Callable[[list], dict]:
    """The ``run(members)`` of one (n, strategy) (members ``(seed, learning rate, layer decay)``), for
    ``member_trainer.grid_then_seeds`` over the strategy's grid and ``extend_past_edges``."""
    kind = strategy if strategy in ("probe", "top2", "gradual") else "full"   # llrd: full's step, other multipliers
    rules = model.rules(kind, trainer.params, trainer.layer_ids)
    at = unfreeze_at(steps) if strategy == "gradual" else None
    return lambda members: trainer.run(rules, rows, members, steps, model.family.evals, unfreeze_at=at, name=kind)


def depends_on(model: Model, n: int, seeds: tuple[int, ...]) -> list:
    """What the numbers of a (model, n, strategy) cell depend on: the key of its cache file."""
    f = model.family
    return [f.overrides, max(f.sizes), f.batch_size, steps_for(n, f), f.evals, f.lrs, model.probe_lrs, DECAYS, seeds,
            STAGES, *bn_key(f)]


def run_model(model: Model, seeds: tuple[int, ...], cells) -> dict:
    """Every (n, strategy) of ``model`` (``cells``: a :class:`runs.Cells`, read when there);
    ``{n: {"steps", strategy: raw}}``."""
    import jaxtune as jt
    from jaxtune.run_data import prepare_data
    from member_trainer import MemberTrainer, grown_cell, subset

    family = model.family
    pool = max(family.sizes)
    cfg = jt.load_config(os.path.join(HERE, "configs", family.config),
                         [*family.overrides, f"data.batch_size={family.batch_size}", f"data.train_limit={pool}"])
    trainer = None

    def runner(n: int, strategy: str, steps: int) -> Callable[[list], dict]:
        nonlocal trainer
        if trainer is None:
            trainer = MemberTrainer(cfg, prepare_data(cfg.data, cfg.model.path, None, cfg.model.task), seeds,
                                    model.max_length, family.recompute_bn)
        rows = subset(len(trainer.data.train), n, cfg.data.seed)
        return strategy_runner(trainer, model, strategy, rows, steps)

    out = {}
    for n in family.sizes:
        steps = steps_for(n, family)
        out[n] = {"steps": steps}
        for strategy in STRATEGIES:
            out[n][strategy] = grown_cell(
                cells, cells.extended_paths(family.name, n, strategy, depends_on(model, n, seeds)),
                lambda: runner(n, strategy, steps), grid(model, strategy), seeds, f"{family.name} n={n} {strategy}")
    return out


def select(raw: dict) -> dict:
    """Per (n, strategy): the chosen learning rate and decay, and the per-seed test accuracy there."""
    out = {}
    for n, by_strategy in raw.items():
        out[n] = {"steps": by_strategy["steps"]}
        for s in STRATEGIES:
            r = by_strategy[s]
            lr, decay = r["points"][r["chosen"]]
            out[n][s] = {"lr": lr, "decay": decay, "test": r["test"], "grid": list(zip(r["points"], r["seed0_val"])),
                         "chosen": r["chosen"], "added": r.get("added", 0)}
    return out


def label(strategy: str) -> str:
    """A strategy's column name (``llrd``: the decay chosen on validation)."""
    return "llrd (decay on val)" if strategy == "llrd" else strategy


def point(lr: float, decay: float | None) -> str:
    """``"3e-4"`` or, with a layer decay, ``"0.8, 3e-4"``."""
    return f"{lr:g}" if decay is None else f"{decay:g}, {lr:g}"


def differences(r: dict) -> dict[str, tuple[float, float, float]]:
    """Paired test-accuracy differences of each compared strategy against ``full``: mean, 95% interval."""
    return {s: protocol.paired_interval(r[s]["test"], r["full"]["test"]) for s in COMPARED}


CLAIMS = [  # (claim, strategy compared with full, "smallest" / "largest" / "every" n, "a beats full" or the reverse)
    ("Freezing the backbone (linear probe) beats full fine-tuning at small n", "probe", "smallest", True),
    ("Training only the top 2 layers beats full fine-tuning at small n", "top2", "smallest", True),
    ("Full fine-tuning beats the linear probe at the larger n", "probe", "largest", False),
    ("Layer-wise LR decay (decay chosen on validation) beats a uniform LR at every n", "llrd", "every", True),
    ("Gradual unfreezing beats full fine-tuning at small n", "gradual", "smallest", True),
]


def claims(results: dict[str, dict]) -> list[dict]:
    """Per model and claim: the verdict of the paired test-accuracy intervals at the sizes it covers."""
    out = []
    for name, by_n in results.items():
        sizes = list(by_n)
        for text, strategy, which, a_wins in CLAIMS:
            covered = {"smallest": sizes[:1], "largest": sizes[-1:], "every": sizes}[which]
            pairs = {n: (by_n[n][strategy]["test"], by_n[n]["full"]["test"]) for n in covered}
            found, summary = protocol.intervals_by_size(pairs if a_wins else {n: (b, a) for n, (a, b) in pairs.items()})
            first, second = (label(strategy), "full") if a_wins else ("full", label(strategy))
            out.append({"claim": f"{name}: {text} ({', '.join(f'n={n:,}' for n in covered)})", "verdict": found,
                        "summary": f"test accuracy {first} - {second}, 95% interval: {summary}"})
    return out


def report(results: dict[str, dict]) -> list[str]:
    """The results tables (test accuracy, paired differences, chosen hyperparameters) as markdown lines."""
    acc, diff, hp = [], [], []
    for name, by_n in results.items():
        for n, r in by_n.items():
            acc.append([name, f"{n:,}", r["steps"], *(protocol.format_mean_std(r[s]["test"]) for s in STRATEGIES)])
            diff.append([name, f"{n:,}", *(protocol.format_interval(*d) for d in differences(r).values())])
            hp += [[name, f"{n:,}", s, protocol.format_grid([p for p, _ in r[s]["grid"]], [v for _, v in r[s]["grid"]],
                                                            r[s]["chosen"], r[s]["added"], point)] for s in STRATEGIES]
    return ["## Test accuracy (hyperparameters chosen on validation; mean ± sample std over seeds)", "",
            *protocol.markdown_table(["model", "n", "steps", *(label(s) for s in STRATEGIES)], acc), "",
            "## Paired test-accuracy differences against `full` (same seed; mean [95% t-interval])", "",
            *protocol.markdown_table(["model", "n", *(f"{label(s)} - full" for s in COMPARED)], diff), "",
            "## Selection: seed-0 validation accuracy per grid point (learning rate; `llrd`: decay, learning rate; "
            "the chosen one in bold, points grown past the grid's edge in italics; test not shown)", "",
            *protocol.markdown_table(["model", "n", "strategy", "grid point: validation accuracy"], hp),
            *protocol.edge_lines([(f"{name} n={n:,} {s}", [p[0] for p, _ in r[s]["grid"]], r[s]["lr"],
                                   [v for _, v in r[s]["grid"]])
                                  for name, by_n in results.items() for n, r in by_n.items() for s in STRATEGIES])]


def protocol_lines(models: list[Model], seeds: tuple[int, ...]) -> list[str]:
    """The protocol section: configs, sizes, grids, step budgets, what the seeds vary."""
    lines = ["## Protocol"]
    for m in models:
        f = m.family
        lines.append(f"{describe(f, 'every strategy')}; learning rates {', '.join(f'{lr:g}' for lr in f.lrs)} (probe: "
                     f"{', '.join(f'{lr:g}' for lr in m.probe_lrs)}); head `{m.head}`; no weight decay on "
                     f"`{m.no_decay}`.")
    lines += [*(f"- `{name}`: {text}." for name, text in STRATEGIES.items()),
              "- Layer ids: embeddings/stem 0, block i -> i + 1 (MobileNetV2: `features_i` -> i), pooler and head "
              "top; `top2` freezes every leaf below top - 2; `llrd` multiplies a layer's learning rate by "
              "decay^(top - id); `gradual` stages split the ids into 4 near-equal groups, top first.",
              f"- Seeds {', '.join(map(str, seeds))} vary head init, data order and dropout; `data.seed` 0 picks the "
              "training examples of the largest n (`data.train_limit`) and, among them, those of a smaller n (nested "
              "subsets), the same for every seed. Per (model, n, strategy) every grid point runs with seed "
              f"{seeds[0]}; the point with the best validation accuracy is chosen ({EXTEND_TEXT}) and run with the "
              "other seeds; "
              "test accuracy at the chosen point is reported once per seed. The runs of one call train as members "
              "of one vmapped step (`experiments/member_trainer.py`); each run counts at its best validation "
              "point.", ""]
    return lines


def plot(path: str, results: dict[str, dict], seeds: tuple[int, ...]) -> str:
    """Test accuracy vs n per strategy (``llrd``: decay chosen on validation), one panel per model."""
    panels = {name: (list(by_n), {label(s): tuple(zip(*(protocol.mean_std(r[s]["test"]) for r in by_n.values())))
                                  for s in STRATEGIES}) for name, by_n in results.items()}
    return protocol.plot_panels(path, panels, xlabel="training examples (log)", ylabel="test accuracy",
                                title=f"Freezing strategies: mean ± std over seeds {list(seeds)}", log_x=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("cnn", "text"), help="run one group of models")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and steps (a test of the script)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train.seed values (default 0 1 2; quick 0 1)")
    parser.add_argument("--cache", help="a JSON file per (model, n, strategy), read instead of training when there "
                                        "(default experiments/results/freezing, committed; with --quick a 'runs' "
                                        "folder beside --out)")
    parser.add_argument("--out", help="results file (default experiments/results/freezing.md; with --quick a "
                                      "temporary folder); .png and .json go beside it")
    parser.add_argument("--text-model", help="model.path for MiniLM's runs (e.g. a tiny checkpoint for --quick)")
    parser.add_argument("--cnn-model", help="model.path for MobileNetV2's runs (e.g. a tiny checkpoint for --quick)")
    add_verify_argument(parser)
    args = parser.parse_args(argv)
    started, load = time.time(), os.getloadavg()[0]
    command = protocol.command_line("freezing.py", argv)
    paths = {"text": args.text_model, "cnn": args.cnn_model}
    models = [quick(m, paths[m.family.group]) if args.quick else with_path(m, paths[m.family.group])
              for m in FULL if args.only in (None, m.family.group)]
    seeds = tuple(args.seeds or ((0, 1) if args.quick else (0, 1, 2)))
    default_dir = os.path.join(tempfile.gettempdir(), "jaxtune_quick") if args.quick else os.path.join(HERE, "results")
    out = args.out or os.path.join(default_dir, "freezing.md")
    stem = os.path.splitext(out)[0]
    cells = Cells.for_experiment("freezing", args.cache, out, args.quick, args.verify)
    results = {m.family.name: select(run_model(m, seeds, cells)) for m in models}
    found = claims(results)
    lines = protocol.header_lines("Freezing strategies over training-set size", command, seeds, started, load,
                                  ("scipy", "matplotlib"), cells.note("(model, n, strategy) results"))
    lines += protocol_lines(models, seeds)
    lines += report(results)
    lines += ["", "## Claims", "", *(f"- {c['claim']}: **{c['verdict']}** ({c['summary']})." for c in found)]
    plot(f"{stem}.png", results, seeds)
    lines += ["", f"![test accuracy vs training-set size, one panel per model]({os.path.basename(stem)}.png)"]
    print(protocol.write_results(out, lines, title="Freezing strategies over training-set size (experiment 2)",
                                 command=command, claims=found, compute=cells.compute()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
