"""Pretrained vs from scratch, over training-set size: how much does pretraining buy, and when?

Experiment 1 of issue #15, under the protocol of ``experiments/protocol.py``. The same architecture
trains from its shipped pretrained weights (a new head from ``train.seed``) and from a fresh random
init (``model.init: random``), on growing training sets:

* ``cnn``:  torchvision's ImageNet MobileNetV2 and EfficientNet-Lite0 on MNIST digits (grey 28x28
  resized to RGB, ``experiments/configs/mnist_mobilenet.yaml``), n in {100, 500, 4000};
* ``text``: all-MiniLM-L6-v2 on 3-class tweet sentiment (``experiments/configs/tweets_minilm.yaml``),
  n in {200, 1000, 6400}.

Protocol: every (model, n) is one ``jt.sweep`` over a learning-rate grid x seeds x {pretrained,
scratch}; ``train.seed`` drives head init (every weight, for scratch), data order and dropout;
``data.train_limit`` picks the n examples (``data.seed`` 0: the same subset for every seed). Both
inits get the same step budget, ``max(min_steps, epochs x n / batch)``, uniform learning rates (no
layer decay) and the config's early stopping on validation accuracy; each strategy's learning rate
is chosen on mean validation accuracy, and only its test accuracy is reported (mean ± sample std,
paired pretrained - scratch differences with 95% t-intervals). Writes
``experiments/results/pretrained_vs_scratch.md``, ``_cnn.png``, ``_text.png`` and ``.json``::

    python experiments/pretrained_vs_scratch.py                  # everything (hours on 2 CPU cores)
    python experiments/pretrained_vs_scratch.py --only text      # MiniLM only
    python experiments/pretrained_vs_scratch.py --quick --out /tmp/pvs/pretrained_vs_scratch.md
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import protocol
from runs import Family, steps_for

HERE = os.path.dirname(os.path.abspath(__file__))
STRATEGIES = {"pretrained": {}, "scratch": {"model.init": "random"}}


FULL = (
    Family("mobilenet_v2", "cnn", "mnist_mobilenet.yaml", ("optim.layer_decay=null",), (100, 500, 4000),
           (3e-4, 1e-3, 3e-3)),
    Family("efficientnet_lite0", "cnn", "mnist_mobilenet.yaml",
           ("model.path=efficientnet_lite0_imagenet", "optim.layer_decay=null"), (100, 500, 4000), (3e-4, 1e-3, 3e-3)),
    Family("minilm", "text", "tweets_minilm.yaml", ("optim.layer_decay=null", "data.eval_limit=1000",
                                                    "data.test_limit=null"), (200, 1000, 6400), (3e-5, 1e-4, 3e-4),
           epochs=2),
)
QUICK_OVERRIDES = {"cnn": ("data.image_size=32", "data.eval_limit=64", "data.test_limit=64", "data.eval_batch_size=64"),
                   "text": ("data.max_length=24", "data.eval_limit=64", "data.test_limit=64")}


def quick(family: Family) -> Family:
    """A tiny version of ``family`` (a test of the script: two sizes, one lr, a few steps)."""
    return dataclasses.replace(family, overrides=family.overrides + QUICK_OVERRIDES[family.group],
                               sizes=family.sizes[:2], lrs=family.lrs[1:2], epochs=1, min_steps=4, evals=2,
                               batch_size=16)


def run_family(family: Family, seeds: tuple[int, ...], output_dir: str, command: str, members: str) -> dict:
    """One sweep per size; returns ``{n: {strategy: chosen}}`` plus the step budgets."""
    import jaxtune as jt

    out = {}
    for n in family.sizes:
        steps = steps_for(n, family)
        overrides = [*family.overrides, f"name={family.name}_n{n}", f"output_dir={output_dir}",
                     f"data.train_limit={n}", f"data.batch_size={family.batch_size}", f"train.max_steps={steps}",
                     f"train.eval_every={max(1, steps // family.evals)}", "train.progress=false"]
        result = jt.sweep(os.path.join(HERE, "configs", family.config), {"optim.learning_rate": list(family.lrs)},
                          seeds=list(seeds), strategies=STRATEGIES, overrides=overrides, command=command,
                          members=members, metric="accuracy", mode="max")
        out[n] = {"steps": steps, **{s: choose(result.rows, s, seeds) for s in STRATEGIES}}
    return out


def choose(rows: list[dict], strategy: str, seeds: tuple[int, ...]) -> dict:
    """The learning rate chosen on validation accuracy for ``strategy``, and its per-seed test accuracy."""
    val, test = {}, {}
    for row in rows:
        if row["strategy"] != strategy:
            continue
        lr = row["hparams"]["optim.learning_rate"]
        val.setdefault(lr, {})[row["seed"]] = float(row["validation"]["val_accuracy"])
        test.setdefault(lr, {})[row["seed"]] = float(row["test"]["accuracy"])
    chosen = protocol.select_on_validation(val, test)
    return {"lr": chosen.point, "val_mean": chosen.val_mean, "test": [chosen.test[s] for s in seeds]}


def claims(results: dict[str, dict]) -> list[dict]:
    """Per model: "pretraining beats scratch at every size", with the paired intervals."""
    out = []
    for name, by_n in results.items():
        parts, verdicts = [], []
        for n, r in by_n.items():
            d, low, high = protocol.paired_interval(r["pretrained"]["test"], r["scratch"]["test"])
            verdicts.append(protocol.verdict(low, high))
            parts.append(f"n={n:,}: {protocol.format_interval(d, low, high, 3)}")
        out.append({"claim": f"{name}: pretrained weights beat a random init at every training-set size "
                             f"({', '.join(f'{n:,}' for n in by_n)})",
                    "verdict": protocol.combined_verdict(verdicts),
                    "summary": "test accuracy pretrained - scratch, 95% interval: " + "; ".join(parts)})
    return out


def report(results: dict[str, dict]) -> list[str]:
    """The results table (test accuracy, chosen learning rates, paired differences) as markdown lines."""
    rows = []
    for name, by_n in results.items():
        for n, r in by_n.items():
            p, s = r["pretrained"], r["scratch"]
            rows.append([name, f"{n:,}", r["steps"], protocol.format_mean_std(p["test"]), f"{p['lr']:g}",
                         protocol.format_mean_std(s["test"]), f"{s['lr']:g}",
                         protocol.format_interval(*protocol.paired_interval(p["test"], s["test"]))])
    return ["## Test accuracy (learning rate chosen on validation; mean ± sample std over seeds)", "",
            *protocol.markdown_table(["model", "n", "steps", "pretrained", "lr", "scratch", "lr",
                                      "pretrained - scratch [95% interval]"], rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("cnn", "text"), help="run one group of models")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test of the script)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", default="off", help="jt.sweep members: off (default), auto or N")
    parser.add_argument("--output-dir", help="where the runs go (default runs/pretrained_vs_scratch)")
    parser.add_argument("--out", help="results file (default experiments/results/pretrained_vs_scratch.md; "
                                      "with --quick a temporary folder)")
    args = parser.parse_args(argv)
    started, load = time.time(), os.getloadavg()[0]
    command = protocol.command_line("pretrained_vs_scratch.py", argv)
    families = [quick(f) if args.quick else f for f in FULL if args.only in (None, f.group)]
    base = os.path.join(tempfile.gettempdir(), "jaxtune_quick") if args.quick else os.path.join(HERE, "results")
    out = args.out or os.path.join(base, "pretrained_vs_scratch.md")
    stem = os.path.splitext(out)[0]
    output_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(out)) if args.quick else "runs",
                                                 "pretrained_vs_scratch")
    seeds = tuple(args.seeds)
    results = {f.name: run_family(f, seeds, output_dir, command, args.members) for f in families}
    found = claims(results)
    lines = protocol.header_lines("Pretrained vs from scratch, over training-set size", command, seeds, started,
                                  load, ("scipy", "matplotlib"))
    lines += ["## Protocol",
              *(f"- `{f.name}`: `experiments/configs/{f.config}` with {', '.join(f'`{o}`' for o in f.overrides)}; "
                f"n in {', '.join(map(str, f.sizes))}; learning rates {', '.join(f'{lr:g}' for lr in f.lrs)}; "
                f"batch {f.batch_size}, steps max({f.min_steps}, {f.epochs} epochs), {f.evals} evaluations, early "
                "stopping as configured; pretrained and scratch alike." for f in families),
              "- Seeds vary head init (every weight for scratch), data order and dropout; `data.seed` 0 picks one "
              "training subset per n for every seed. Per (model, n, init) the learning rate with the best mean "
              "validation accuracy is chosen; its test accuracy is reported once.", ""]
    lines += report(results)
    lines += ["", "## Claims", "", *(f"- {c['claim']}: **{c['verdict']}** ({c['summary']})." for c in found)]
    for group in dict.fromkeys(f.group for f in families):   # one PNG per group: cnn and text sizes differ
        names = [f.name for f in families if f.group == group]
        png = f"{stem}_{group}.png"
        protocol.plot_lines(png, list(results[names[0]]), {
            f"{name} {strategy}": tuple(zip(*(protocol.mean_std(r[strategy]["test"]) for r in results[name].values())))
            for name in names for strategy in STRATEGIES},
            xlabel="training examples (log)", ylabel="test accuracy",
            title=f"Pretrained vs scratch ({group}): mean ± std over seeds {list(seeds)}", log_x=True)
        lines += ["", f"![{group}: test accuracy vs training-set size]({os.path.basename(png)})"]
    print(protocol.write_results(out, lines, title="Pretrained vs from scratch over size (experiment 1)",
                                 command=command, claims=found), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
