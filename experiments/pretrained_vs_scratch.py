"""Pretrained vs from scratch, over training-set size: how much does pretraining buy, and when?

Experiment 1 of issue #15, under the protocol of ``experiments/protocol.py``. The same architecture
trains every weight from its shipped pretrained weights (a new head from ``train.seed``) and from a
fresh random init (``model.init: random``: every weight from ``train.seed``), on growing training sets:

* ``text``: all-MiniLM-L6-v2 on 3-class tweet sentiment (``experiments/configs/tweets_minilm.yaml``),
  n in {200, 1000, 6400} (one epoch of 6,400 tweets: 400 steps per run);
* ``cnn``:  torchvision's ImageNet MobileNetV2 and EfficientNet-Lite0 on MNIST digits at 48x48
  (``experiments/configs/mnist_mobilenet.yaml``), n in {100, 500, 4000}.

Protocol: per (model, n, init) every learning rate of the model's three-point grid (the same for both
inits) trains with seed 0, the rate with the best seed-0 validation accuracy is chosen and run with
the other seeds (``member_trainer.grid_then_seeds``); ``train.seed`` drives head init (every weight,
for scratch), data order and dropout; ``data.seed`` 0 picks the n examples (nested subsets, the same
for every seed). Both inits get the same step budget, ``max(min_steps, epochs x n / batch)``, one
learning rate for every layer, the config's optimizer and schedule, and no weight decay on biases
and norm scales. The runs of one call train as members of one vmapped step
(``experiments/member_trainer.py``); each run counts at its best validation point, where its test
accuracy is evaluated once. Before every evaluation a CNN run re-estimates its batch-norm statistics on
its n training digits (``recompute_bn``): after 32 steps the running statistics lag far behind the
weights (``experiments/bn_statistics.py``). Reported: test accuracy mean ± sample std, paired pretrained - scratch
differences (same seed) with 95% t-intervals, and whether the gap shrinks from the smallest to the
largest n (the per-seed gaps paired by seed). Each (model, n, init) is cached as JSON under
``--cache``. Writes ``experiments/results/pretrained_vs_scratch.md``, ``.png`` and ``.json``::

    python experiments/pretrained_vs_scratch.py --only text      # MiniLM (106 min on 2 cores shared with
                                                                 # experiment 2, 2026-12-01; cells committed)
    python experiments/pretrained_vs_scratch.py --only cnn       # MobileNetV2 (24 min on 2 cores), then
                                                                 # EfficientNet-Lite0 (21 min), 2026-12-01
    python experiments/pretrained_vs_scratch.py                  # both (the cache keeps what ran)
    python experiments/pretrained_vs_scratch.py --models minilm,mobilenet_v2    # some of the models
    python experiments/pretrained_vs_scratch.py --verify "^minilm n=200 "    # train those cells again: the
                                                                 # same numbers as their files, or an error
    python experiments/pretrained_vs_scratch.py --quick --text-model TINY_BERT --cnn-model TINY_MOBILENET \\
        --out /tmp/pvs/pretrained_vs_scratch.md                  # tiny random models, a few steps (the test)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import protocol
from runs import EXTEND_TEXT, Cells, Family, add_verify_argument, bn_key, describe, steps_for

HERE = os.path.dirname(os.path.abspath(__file__))
INITS = {"pretrained": "the shipped pretrained weights, a new head from the seed",
         "scratch": "the same architecture, every weight freshly initialised from the seed (`model.init: random`)"}
NO_DECAY = r".*/(bias|scale)"     # biases and norm scales (BERT's LayerNorm/scale, batch norm's scale)


@dataclasses.dataclass(frozen=True)
class Model:
    """A model of the experiment: its runs (``family``: config, sizes, step budget, and the
    learning-rate grid of both inits)."""

    family: Family
    max_length: int | None = None   # text: pad every batch to it (one compiled shape)
    note: str | None = None         # what a reader must know to read its numbers (the protocol section)


# One grid for both inits, centred where the two-point grids of 2026-11-30 chose (every choice was at an edge)
TEXT_LRS = (1e-4, 3e-4, 1e-3)
CNN_LRS = (3e-4, 1e-3, 3e-3)
CNN = ("data.image_size=48", "data.eval_limit=200")   # MNIST: 4,000 training, 500 validation, 500 test digits
FULL = (
    Model(Family("minilm", "text", "tweets_minilm.yaml", ("optim.layer_decay=null", "data.max_length=40",
                                                          "data.eval_limit=200", "data.test_limit=500"),
                 (200, 1000, 6400), TEXT_LRS, batch_size=16, epochs=1, min_steps=32, evals=4),
          max_length=40),
    Model(Family("mobilenet_v2", "cnn", "mnist_mobilenet.yaml", ("optim.layer_decay=null", *CNN), (100, 500, 4000),
                 CNN_LRS, batch_size=32, epochs=1, min_steps=32, evals=4, recompute_bn=True)),
    Model(Family("efficientnet_lite0", "cnn", "mnist_mobilenet.yaml",
                 ("model.path=efficientnet_lite0_imagenet", "optim.layer_decay=null", *CNN), (100, 500, 4000),
                 CNN_LRS, batch_size=32, epochs=1, min_steps=32, evals=4, recompute_bn=True),
          note="its batch norm keeps 0.99 of its running statistics per step (momentum 0.01; MobileNetV2 0.1), so "
               "the re-estimation before each evaluation matters most here: evaluated with the running statistics, "
               "its runs of 2026-12-01 reached only 0.30 and 0.36 pretrained at n = 100 and 500 and chance from "
               "scratch (`results/bn_statistics.md` measures the gap on the same weights)"),
)
QUICK_OVERRIDES = {"text": ("data.max_length=16", "data.eval_limit=24", "data.test_limit=24"),
                   "cnn": ("data.image_size=16", "data.eval_limit=24", "data.test_limit=24", "data.eval_batch_size=24")}


def quick(model: Model, path: str | None) -> Model:
    """A tiny version of ``model`` (a test of the script): two small sizes with the same 4 steps, one
    learning rate per init; ``path`` (a tiny checkpoint) replaces the real weights."""
    family = model.family
    keys = {o.split("=")[0] for o in QUICK_OVERRIDES[family.group]} | {"model.path"}
    overrides = tuple(o for o in family.overrides if o.split("=")[0] not in keys) + QUICK_OVERRIDES[family.group]
    if path is not None:
        overrides += (f"model.path={path}",)
    family = dataclasses.replace(family, overrides=overrides, sizes=(16, 32), lrs=family.lrs[-1:], batch_size=8,
                                 min_steps=4, evals=1)
    return dataclasses.replace(model, family=family, max_length=16 if model.max_length else None)


def depends_on(model: Model, n: int, seeds: tuple[int, ...]) -> list:
    """What the numbers of a (model, n, init) cell depend on: the key of its cache file."""
    f = model.family
    return [f.overrides, max(f.sizes), f.batch_size, steps_for(n, f), f.evals, f.lrs, seeds, NO_DECAY, *bn_key(f)]


def run_model(model: Model, seeds: tuple[int, ...], cells) -> dict:
    """Every (n, init) of ``model`` (``cells``: a :class:`runs.Cells`, read when there);
    ``{n: {"steps", init: raw}}``."""
    import jaxtune as jt
    from jaxtune.run_data import prepare_data
    from member_trainer import MemberTrainer, grown_cell, subset

    family = model.family
    cfgs = {init: jt.load_config(os.path.join(HERE, "configs", family.config),
                                 [*family.overrides, f"data.batch_size={family.batch_size}",
                                  f"data.train_limit={max(family.sizes)}",
                                  f"model.init={'random' if init == 'scratch' else 'pretrained'}"]) for init in INITS}
    cfg, data, trainers = cfgs["pretrained"], None, {}
    rules = [(NO_DECAY, jt.settings(weight_decay=0.0, name="no_decay")), (".*", jt.settings(name="decay"))]

    def runner(n: int, init: str, steps: int):
        nonlocal data
        if data is None:
            data = prepare_data(cfg.data, cfg.model.path, None, cfg.model.task)
        if init not in trainers:
            trainers[init] = MemberTrainer(cfgs[init], data, seeds, model.max_length, family.recompute_bn)
        rows = subset(len(data.train), n, cfg.data.seed)
        return lambda members: trainers[init].run(rules, rows, members, steps, family.evals, name="full")

    out = {n: {"steps": steps_for(n, family)} for n in family.sizes}
    for init in INITS:
        for n in family.sizes:
            steps = out[n]["steps"]
            out[n][init] = grown_cell(cells, cells.extended_paths(family.name, n, init, depends_on(model, n, seeds)),
                                      lambda: runner(n, init, steps), [(lr, None) for lr in family.lrs], seeds,
                                      f"{family.name} n={n} {init}")
    return out


def gaps(r: dict) -> list[float]:
    """Per seed: pretrained - scratch test accuracy at one n."""
    return [p - s for p, s in zip(r["pretrained"]["test"], r["scratch"]["test"])]


def claims(results: dict[str, dict]) -> list[dict]:
    """Per model: pretraining beats scratch at every n; its advantage is larger at the smallest n
    than at the largest (the per-seed gaps paired by seed)."""
    out = []
    for name, by_n in results.items():
        found, summary = protocol.intervals_by_size({n: (r["pretrained"]["test"], r["scratch"]["test"])
                                                     for n, r in by_n.items()})
        sizes = list(by_n)
        out.append({"claim": f"{name}: pretrained weights beat a random init at every training-set size "
                             f"({', '.join(f'{n:,}' for n in sizes)})", "verdict": found,
                    "summary": f"test accuracy pretrained - scratch, 95% interval: {summary}"})
        small, large = sizes[0], sizes[-1]
        d, low, high = protocol.paired_interval(gaps(by_n[small]), gaps(by_n[large]))
        out.append({"claim": f"{name}: pretraining's advantage shrinks with more data (larger at n={small:,} than "
                             f"at n={large:,})",
                    "verdict": protocol.verdict(low, high),
                    "summary": f"(pretrained - scratch) at n={small:,} minus at n={large:,}, paired by seed, 95% "
                               f"interval: {protocol.format_interval(d, low, high, 3)}"})
    return out


def report(results: dict[str, dict]) -> list[str]:
    """The results tables (test accuracy, chosen learning rates, paired differences; the selection
    grid) as markdown lines."""
    rows, grid = [], []
    for name, by_n in results.items():
        for n, r in by_n.items():
            row = [name, f"{n:,}", r["steps"]]
            for init in INITS:
                row += [protocol.format_mean_std(r[init]["test"]), f"{r[init]['points'][r[init]['chosen']][0]:g}"]
                grid.append([name, f"{n:,}", init, protocol.format_grid(
                    r[init]["points"], r[init]["seed0_val"], r[init]["chosen"], r[init].get("added", 0))])
            rows.append(row + [protocol.format_interval(*protocol.paired_interval(r["pretrained"]["test"],
                                                                                  r["scratch"]["test"]))])
    return ["## Test accuracy (learning rate chosen on validation; mean ± sample std over seeds)", "",
            *protocol.markdown_table(["model", "n", "steps", "pretrained", "lr", "scratch", "lr",
                                      "pretrained - scratch [95% interval]"], rows), "",
            "## Selection: seed-0 validation accuracy per learning rate (the chosen one in bold, rates grown past the "
            "grid's edge in italics; test not shown)", "",
            *protocol.markdown_table(["model", "n", "init", "learning rate: validation accuracy"], grid),
            *protocol.edge_lines([(f"{name} n={n:,} {init}", [p[0] for p in r[init]["points"]],
                                   r[init]["points"][r[init]["chosen"]][0], r[init]["seed0_val"])
                                  for name, by_n in results.items() for n, r in by_n.items() for init in INITS])]


def protocol_lines(models: list[Model], seeds: tuple[int, ...]) -> list[str]:
    """The protocol section: configs, sizes, grids, step budgets, what the seeds vary."""
    lines = ["## Protocol"]
    for m in models:
        lines.append(f"{describe(m.family, 'both inits')}; learning rates, for both inits: "
                     f"{', '.join(f'{lr:g}' for lr in m.family.lrs)}; every weight trains at one rate; no weight "
                     f"decay on `{NO_DECAY}`." + (f" Note: {m.note}." if m.note else ""))
    lines += [*(f"- `{name}`: {text}." for name, text in INITS.items()),
              f"- Seeds {', '.join(map(str, seeds))} vary head init (every weight, for scratch), data order and "
              "dropout; `data.seed` 0 picks the training examples of the largest n and, among them, those of a "
              f"smaller n (nested subsets), the same for every seed. Per (model, n, init) every learning rate runs "
              f"with seed {seeds[0]}; the one with the best validation accuracy is chosen ({EXTEND_TEXT}) and run "
              "with the other seeds; test accuracy at the chosen rate is reported once per seed. The runs of one call train as "
              "members of one vmapped step (`experiments/member_trainer.py`); each run counts at its best "
              "validation point.", ""]
    return lines


def plot(path: str, results: dict[str, dict], seeds: tuple[int, ...]) -> str:
    """Test accuracy vs n, pretrained and scratch, one panel per model."""
    panels = {name: (list(by_n), {init: tuple(zip(*(protocol.mean_std(r[init]["test"]) for r in by_n.values())))
                                  for init in INITS}) for name, by_n in results.items()}
    return protocol.plot_panels(path, panels, xlabel="training examples (log)", ylabel="test accuracy",
                                title=f"Pretrained vs scratch: mean ± std over seeds {list(seeds)}", log_x=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("cnn", "text"), help="run one group of models")
    parser.add_argument("--models", help="comma-separated model names to run or report, of "
                                         f"{', '.join(m.family.name for m in FULL)} (default: all of --only's group)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and steps, the first model of each group "
                                                             "(a test of the script)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train.seed values (default 0 1 2; quick 0 1)")
    parser.add_argument("--cache", help="a JSON file per (model, n, init), read instead of training when there "
                                        "(default experiments/results/pretrained_vs_scratch, committed; with --quick a "
                                        "'runs' folder beside --out)")
    parser.add_argument("--out", help="results file (default experiments/results/pretrained_vs_scratch.md; with "
                                      "--quick a temporary folder); .png and .json go beside it")
    parser.add_argument("--text-model", help="model.path for MiniLM's runs (e.g. a tiny checkpoint for --quick)")
    parser.add_argument("--cnn-model", help="model.path for the CNNs' runs with --quick (a tiny checkpoint)")
    add_verify_argument(parser)
    args = parser.parse_args(argv)
    started, load = time.time(), os.getloadavg()[0]
    command = protocol.command_line("pretrained_vs_scratch.py", argv)
    paths = {"text": args.text_model, "cnn": args.cnn_model}
    names = [m.family.name for m in FULL]
    wanted = args.models.split(",") if args.models else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
    models = [m for m in FULL if args.only in (None, m.family.group) and m.family.name in wanted]
    if args.quick:
        models = [quick(m, paths[m.family.group]) for m in models
                  if m is next(f for f in FULL if f.family.group == m.family.group)]
    elif args.text_model:
        models = [dataclasses.replace(m, family=dataclasses.replace(
            m.family, overrides=m.family.overrides + (f"model.path={args.text_model}",)))
                  if m.family.group == "text" else m for m in models]
    seeds = tuple(args.seeds or ((0, 1) if args.quick else (0, 1, 2)))
    default_dir = os.path.join(tempfile.gettempdir(), "jaxtune_quick") if args.quick else os.path.join(HERE, "results")
    out = args.out or os.path.join(default_dir, "pretrained_vs_scratch.md")
    stem = os.path.splitext(out)[0]
    cells = Cells.for_experiment("pretrained_vs_scratch", args.cache, out, args.quick, args.verify)
    results = {m.family.name: run_model(m, seeds, cells) for m in models}
    found = claims(results)
    lines = protocol.header_lines("Pretrained vs from scratch, over training-set size", command, seeds, started,
                                  load, ("scipy", "matplotlib"), cells.note("(model, n, init) results"))
    lines += protocol_lines(models, seeds)
    lines += report(results)
    lines += ["", "## Claims", "", *(f"- {c['claim']}: **{c['verdict']}** ({c['summary']})." for c in found)]
    plot(f"{stem}.png", results, seeds)
    lines += ["", f"![test accuracy vs training-set size, one panel per model]({os.path.basename(stem)}.png)"]
    print(protocol.write_results(out, lines, title="Pretrained vs from scratch over size (experiment 1)",
                                 command=command, claims=found, compute=cells.compute()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
