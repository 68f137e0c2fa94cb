"""Learning rate x warm-up: which settings fine-tune MiniLM stably, and does warm-up help?

Experiment 4 of issue #15, under the protocol of ``experiments/protocol.py``. all-MiniLM-L6-v2 (the
shipped weights, ``model.path=minilm``) is fully fine-tuned with AdamW at one learning rate for every
layer, on two data sets:

* ``tweets``: 3-class tweet sentiment, 1,000 training tweets, 64 steps of 16 (about one epoch), 300
  validation and 1,000 test tweets (``experiments/configs/lr_warmup_tweets.yaml``);
* ``wnut``:   WNUT-16 NER (BIO tags), 1,280 training sentences, 300 steps of 16 (3.75 epochs), the
  whole validation and test splits, 228 sentences each (``experiments/configs/lr_warmup_wnut.yaml``);

at every learning rate in {3e-5, 1e-4, 3e-4, 1e-3} x warm-up in {0, 10% of the steps} (linear warm-up,
then linear decay to 0) x seeds 0, 1, 2 (``train.seed``: head init, data order, dropout). Every run of a
data set has the same step budget (``train.max_steps`` of its config) and is evaluated once, at its last
step: a run that falls apart late is not rescued by an earlier checkpoint.

A run **fails** when its test metric is within 2 points of a constant prediction: tweets, test accuracy
below the majority class's test accuracy + 0.02; NER, test entity F1 < 0.02 (predicting every token
``O`` scores 0). A run stopped by a non-finite loss (:class:`jaxtune.NonFiniteError`) fails and is scored as that
constant prediction. Reported per cell: validation and test mean ± sample std, failures; per learning
rate: the paired difference warm-up 10% - none (same seeds) with its 95% t-interval; per warm-up: the
learning rate chosen on mean validation metric and its test values; claims with computed verdicts.

Each run is one :func:`jaxtune.finetune` (runs are sequential: on CPU vmapped members are no faster, see
``benchmarks/results/cpu-members.md``; seeds of one (learning rate, warm-up) share their compiled step
through the persistent compilation cache). Its numbers are cached as JSON under ``--cache``, so an
invocation runs only what is missing, then rewrites the whole results file, PNG and sidecar::

    python experiments/lr_warmup.py                                   # 48 runs; writes results/lr_warmup.*
    python experiments/lr_warmup.py --datasets tweets --seeds 0,1     # a part; the rest later
    python experiments/lr_warmup.py --verify 'w0/seed0'                # those runs trained again: same numbers?
    python experiments/lr_warmup.py --quick --model TINY_BERT_DIR --work /tmp/w --cache /tmp/c --out /tmp/lw.md

Cost on the 2-core machine: the tweets half took 22.9 min (24 runs, 2026-11-30). A WNUT run of 300 steps
of 16 takes 118-144 s of wall time with nothing else running (2026-12-01), so the WNUT half takes about
50 min; run it in parts with ``--seeds``.

WNUT's budget is 300 steps of 16 because at smaller ones MiniLM did not leave the every-token-``O``
solution: in trial runs it had not at 1e-3 without warm-up (160 steps of 8), 3e-4 with warm-up (240 steps
of 8; its loss flat at the label prior's) or 1e-4 with warm-up (200 steps of 8, its loss still falling);
in a 4-epoch WNUT run of the runner (2e-4, batch 16) entity F1 was 0 at step 100, 0.03 at step 200, 0.22
at step 300. At the lowest rates the NER failure rate may still mix instability with under-training; the
per-run losses in the results tell them apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np

import jaxtune as jt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protocol  # noqa: E402
from runs import Cells, add_verify_argument  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")
LEARNING_RATES = (3e-5, 1e-4, 3e-4, 1e-3)
WARMUPS = (0.0, 0.1)
HIGH_LR = 3e-4            # "high" learning rates: >= this
FAILURE_MARGIN = 0.02     # a run within this of a constant prediction fails


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One data set of the experiment: its config, the metric compared, and how it is named
    (``title`` takes the number of training examples)."""

    config: str
    metric: str
    metric_label: str
    title: str


DATASETS = {
    "tweets": Dataset("lr_warmup_tweets.yaml", "accuracy", "accuracy", "Tweet sentiment ({:,} training tweets)"),
    "wnut": Dataset("lr_warmup_wnut.yaml", "entity_f1", "entity F1", "WNUT-16 NER ({:,} training sentences)"),
}
QUICK = ["data.train_limit=48", "data.eval_limit=16", "data.test_limit=24", "data.max_length=16",  # one length bucket
         "data.batch_size=8", "data.eval_batch_size=32", "train.max_steps=10", "train.eval_every=10",
         "train.log_every=5"]
QUICK_LEARNING_RATES = (1e-3,)   # one compiled step per (data set, warm-up)


def _csv(text: str, kind=str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (at least 2)")
    parser.add_argument("--model", default="minilm", help="the checkpoint fine-tuned (model.path)")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny data, 10-step runs, learning rates {QUICK_LEARNING_RATES}: checks the pipeline only")
    parser.add_argument("--work", default=os.path.join("runs", "lr_warmup"), help="run directories")
    parser.add_argument("--cache", default=os.path.join(HERE, "results", "lr_warmup"), help="per-run result JSON")
    add_verify_argument(parser)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "lr_warmup.md"),
                        help="the results file; the PNG and the JSON sidecar go beside it")
    args = parser.parse_args(argv)
    args.datasets = _csv(args.datasets)
    unknown = sorted(set(args.datasets) - set(DATASETS))
    if unknown or not args.datasets:
        parser.error(f"--datasets: unknown {unknown or 'none given'}; choose from {', '.join(DATASETS)}")
    try:
        args.seeds = _csv(args.seeds, int)
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds needs at least 2 distinct seeds (paired intervals), got {args.seeds}")
    args.learning_rates = QUICK_LEARNING_RATES if args.quick else LEARNING_RATES
    args.command = protocol.command_line("lr_warmup.py", argv)
    return args


def run_name(key: str, lr: float, warmup: float, seed: int) -> str:
    """``tweets/lr0.0003_w0.1/seed2``: a run's cache key (and, with ``/`` as ``_``, its run directory).

    Example::

        >>> run_name("wnut", 1e-4, 0.0, 1)
        'wnut/lr0.0001_w0/seed1'
    """
    return f"{key}/lr{lr:g}_w{warmup:g}/seed{seed}"


def constant_baseline(data, metric: str) -> dict:
    """The validation and test metric of a constant prediction (for accuracy the training split's
    majority class, for entity F1 every token ``O``: no entity, F1 0), and ``prior_loss``: the test
    cross-entropy of predicting the training label frequencies (a collapsed run's loss).

    Example::

        constant_baseline(jt.prepare_data(cfg.data, "minilm", None, "auto"), "accuracy")  # {"val": 0.43, ...}
    """
    labels = lambda examples: np.concatenate([np.ravel(e["labels"]) for e in examples]).astype(np.int64)
    train, test = (y[y >= 0] for y in (labels(data.train), labels(data.test)))   # tokens without a tag are < 0
    prior = np.bincount(train, minlength=len(data.label_names)) / len(train)
    prior_loss = float(-np.mean(np.log(np.maximum(prior[test], 1e-12))))
    if metric == "entity_f1":
        return {"label": "every token O", "val": 0.0, "test": 0.0, "prior_loss": prior_loss}
    majority = int(prior.argmax())
    return {"label": f"majority class {data.label_names[majority]!r}", "prior_loss": prior_loss,
            "val": float(np.mean(labels(data.validation) == majority)), "test": float(np.mean(test == majority))}


def failed(test: float, baseline: dict) -> bool:
    """A run fails when its test metric is below the constant prediction's + ``FAILURE_MARGIN`` (2 points).

    Example::

        >>> failed(0.44, {"test": 0.43}), failed(0.60, {"test": 0.43}), failed(0.01, {"test": 0.0})
        (True, False, True)
    """
    return bool(test < baseline["test"] + FAILURE_MARGIN)


def last_train_loss(metrics_path: str) -> float | None:
    """The last logged training loss of a run (its ``metrics.jsonl``), or None."""
    loss = None
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("split") == "train" and "loss" in row:
                loss = float(row["loss"])
    return loss


class Experiment:
    """The configs, prepared data and constant-prediction baselines of the data sets, and the run cache."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cells = Cells(args.cache, args.verify)   # labels: run names, e.g. tweets/lr0.0003_w0.1/seed2
        self.overrides, self.configs, self.data, self.baselines = {}, {}, {}, {}
        for key in args.datasets:
            spec = DATASETS[key]
            self.overrides[key] = [f"model.path={args.model}", f"output_dir={args.work}", *(QUICK if args.quick else [])]
            cfg = self.configs[key] = jt.load_config(os.path.join(CONFIGS, spec.config), self.overrides[key])
            self.data[key] = jt.prepare_data(cfg.data, cfg.model.path, cfg.model.num_labels, cfg.model.task)
            self.baselines[key] = constant_baseline(self.data[key], spec.metric)

    def title(self, key: str) -> str:
        return DATASETS[key].title.format(len(self.data[key].train))

    def settings(self, key: str) -> dict:
        """What a run of ``key`` depends on besides (learning rate, warm-up, seed): a cached run must match it."""
        cfg = self.configs[key]
        return json.loads(json.dumps({"model": cfg.model.path, "data": dataclasses.asdict(cfg.data),
                                      "optim": dataclasses.asdict(cfg.optim) | {"learning_rate": None,
                                                                                 "warmup_fraction": None},
                                      "steps": cfg.train.max_steps}))

    def run(self, key: str, lr: float, warmup: float, seed: int) -> dict:
        """The cached record of one run, trained (and stored) when missing; trained again and checked
        against its file when ``--verify`` matches its name (its run directory started over)."""
        name = run_name(key, lr, warmup, seed)
        path = os.path.join(self.args.cache, f"{name}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            if record.get("settings") != self.settings(key):
                raise SystemExit(f"{path} holds a run with other settings than this invocation's ({key}: model, data, "
                                 "optimizer or steps differ); delete it, or pass another --cache for this setup")
        return self.cells.get(path, lambda: self._train(key, lr, warmup, seed, name.replace("/", "_"),
                                                        overwrite=self.cells.verifying(name)), name)

    def _train(self, key: str, lr: float, warmup: float, seed: int, name: str, overwrite: bool) -> dict:
        spec, baseline, start = DATASETS[key], self.baselines[key], time.time()
        overrides = [*self.overrides[key], f"name={name}", f"optim.learning_rate={lr!r}",
                     f"optim.warmup_fraction={warmup!r}", f"train.seed={seed}"]
        record = {"dataset": key, "learning_rate": lr, "warmup_fraction": warmup, "seed": seed,
                  "settings": self.settings(key)}
        try:
            result = jt.finetune(os.path.join(CONFIGS, spec.config), overrides, data=self.data[key], overwrite=overwrite)
        except jt.NonFiniteError as e:   # diverged: scored as the constant prediction
            record.update(val=baseline["val"], test=baseline["test"], diverged_at=e.step, train_loss=None)
        else:
            shutil.rmtree(result.paths["checkpoints"], ignore_errors=True)   # ~170 MB a run; the numbers are kept
            record.update(val=float(result.validation_metrics[f"val_{spec.metric}"]),
                          test=float(result.test_metrics[spec.metric]), diverged_at=None,
                          train_loss=last_train_loss(result.paths["metrics"]),
                          test_metrics={k: float(v) for k, v in result.test_metrics.items()})
        record["failed"] = failed(record["test"], baseline)
        print(f"{name}: val {record['val']:.4f} test {record['test']:.4f}{' FAILED' if record['failed'] else ''} "
              f"({time.time() - start:.0f} s)", flush=True)
        return record


Grid = dict  # {(dataset, lr, warmup): {seed: record}}


def values(grid: Grid, key: str, lr: float, warmup: float, field: str, seeds) -> list[float]:
    return [float(grid[key, lr, warmup][s][field]) for s in seeds]


def warmup_label(warmup: float) -> str:
    return "no warm-up" if warmup == 0 else f"{warmup:.0%} warm-up"


def cell_table(grid: Grid, key: str, lrs, seeds) -> list[str]:
    """Validation and test mean ± std and failures per (learning rate, warm-up) of one data set."""
    rows = []
    for lr in lrs:
        row = [f"{lr:g}"]
        row += [protocol.format_mean_std(values(grid, key, lr, w, "val", seeds)) for w in WARMUPS]
        row += [protocol.format_mean_std(values(grid, key, lr, w, "test", seeds)) for w in WARMUPS]
        row += [f"{int(sum(values(grid, key, lr, w, 'failed', seeds)))}/{len(seeds)}" for w in WARMUPS]
        rows.append(row)
    heads = [f"{split}, {warmup_label(w)}" for split in ("validation", "test") for w in WARMUPS]
    return protocol.markdown_table(["learning rate", *heads, *(f"failed, {warmup_label(w)}" for w in WARMUPS)], rows)


def warmup_gain(grid: Grid, key: str, lr: float, seeds) -> tuple[float, float, float]:
    """Test metric, 10% warm-up - none, same seeds: mean and 95% interval."""
    return protocol.paired_interval(values(grid, key, lr, WARMUPS[1], "test", seeds),
                                    values(grid, key, lr, WARMUPS[0], "test", seeds))


def chosen_on_validation(grid: Grid, key: str, lrs, seeds) -> dict[float, protocol.Selected]:
    """Per warm-up: the learning rate with the best mean validation metric, and its test values."""
    out = {}
    for w in WARMUPS:
        val = {lr: {s: grid[key, lr, w][s]["val"] for s in seeds} for lr in lrs}
        test = {lr: {s: grid[key, lr, w][s]["test"] for s in seeds} for lr in lrs}
        out[w] = protocol.select_on_validation(val, test)
    return out


def high_lr_failures(grid: Grid, key: str, lrs, seeds) -> tuple[list[float], list[float]]:
    """Failure indicators (1 = failed) at the learning rates >= ``HIGH_LR``, per (lr, seed), without and
    with warm-up."""
    high = [lr for lr in lrs if lr >= HIGH_LR]
    return tuple([float(grid[key, lr, w][s]["failed"]) for lr in high for s in seeds] for w in WARMUPS)


def claims(grid: Grid, datasets, lrs, seeds) -> list[dict]:
    """The claims this experiment tests, each with its verdict from paired 95% intervals."""
    name = lambda key: f"{key} ({DATASETS[key].metric_label})"
    stable, gains, chosen_gain, high_vs_low = [], [], [], []
    for key in datasets:
        none, warm = high_lr_failures(grid, key, lrs, seeds)
        d, low, high = protocol.paired_interval(none, warm)
        stable.append((protocol.verdict(low, high), f"{key}: failed {int(sum(none))}/{len(none)} -> "
                                                    f"{int(sum(warm))}/{len(warm)}, reduction "
                                                    f"{protocol.format_interval(d, low, high, 2)}"))
        for lr in lrs:
            d, low, high = warmup_gain(grid, key, lr, seeds)
            gains.append((protocol.verdict(low, high), f"{key} lr {lr:g}: {protocol.format_interval(d, low, high, 3)}"))
        picked = chosen_on_validation(grid, key, lrs, seeds)
        d, low, high = protocol.paired_interval([picked[WARMUPS[1]].test[s] for s in seeds],
                                                [picked[WARMUPS[0]].test[s] for s in seeds])
        chosen_gain.append((protocol.verdict(low, high),
                            f"{name(key)}: lr {picked[WARMUPS[1]].point:g} with warm-up vs {picked[WARMUPS[0]].point:g} "
                            f"without: {protocol.format_interval(d, low, high, 3)}"))
        best = picked[WARMUPS[0]].point
        d, low, high = protocol.paired_interval(values(grid, key, best, WARMUPS[0], "test", seeds),
                                                values(grid, key, max(lrs), WARMUPS[0], "test", seeds))
        high_vs_low.append((protocol.verdict(low, high), f"{name(key)}: {best:g} - {max(lrs):g}: "
                                                         f"{protocol.format_interval(d, low, high, 3)}"))
    high_lrs = " and ".join(f"{lr:g}" for lr in lrs if lr >= HIGH_LR)
    found = [
        (f"10% warm-up makes high learning rates ({high_lrs}) stable: fewer failed runs (test metric within 2 points "
         "of a constant prediction)", "failed runs at those rates, no warm-up -> 10%, and the paired reduction "
         "(failure indicators per rate and seed, 95% interval)", stable),
        ("10% warm-up improves the test metric at every learning rate",
         "test metric, 10% warm-up - none, 95% interval", gains),
        ("10% warm-up improves the test metric when each schedule gets its own learning rate chosen on validation",
         "test metric at each warm-up's validation-chosen rate, 10% - none, 95% interval", chosen_gain),
        (f"Without warm-up, the highest learning rate ({max(lrs):g}) is worse than the one chosen on validation",
         f"test metric, no warm-up, validation-chosen rate - {max(lrs):g}, 95% interval (0 when the highest is "
         "chosen)", high_vs_low),
    ]
    return [{"claim": text, "verdict": protocol.combined_verdict([v for v, _ in parts]),
             "summary": f"{about}: " + "; ".join(s for _, s in parts)} for text, about, parts in found]


def plot_panels(path: str, grid: Grid, titles: dict, lrs, seeds, baselines: dict, model: str) -> str:
    """One panel per data set: test metric (mean ± std over seeds) vs learning rate (log), one line per
    warm-up, the constant prediction + 2 points dashed (below it a run fails). Same numbers, same bytes."""
    panels = {}
    for key, title in titles.items():
        stats = {warmup_label(w): [protocol.mean_std(values(grid, key, lr, w, "test", seeds)) for lr in lrs]
                 for w in WARMUPS}
        panels[title] = (list(lrs), {name: ([m for m, _ in st], [s for _, s in st]) for name, st in stats.items()})
    return protocol.plot_panels(
        path, panels, xlabel="peak learning rate (log)", log_x=True,
        ylabel={title: f"test {DATASETS[key].metric_label}" for key, title in titles.items()},
        hlines={title: (baselines[key]["test"] + FAILURE_MARGIN, "failure line (constant + 0.02)")
                for key, title in titles.items()},
        title=f"{model}, AdamW: mean ± std over seeds {list(seeds)}")


def setup_lines(exp: Experiment) -> list[str]:
    """What was trained, on what, for how long, and what counts as a failure."""
    lines = ["## Setup", ""]
    for key in exp.args.datasets:
        cfg, data, base = exp.configs[key], exp.data[key], exp.baselines[key]
        steps, batch = cfg.train.max_steps, cfg.data.batch_size
        lines.append(f"- `{key}`: {data.description}. Every run: {steps} steps of batch {batch} "
                     f"({steps * batch:,} examples, {steps * batch / len(data.train):.2f} epochs), evaluated once at "
                     f"the last step. Constant prediction ({base['label']}): validation {base['val']:.4f}, test "
                     f"{base['test']:.4f}; a run fails below test {base['test'] + FAILURE_MARGIN:.4f}. Test loss of predicting "
                     f"the training label frequencies: {base['prior_loss']:.4f}.")
    cfg = exp.configs[exp.args.datasets[0]]
    model = "all-MiniLM-L6-v2, shipped weights" if exp.args.model == "minilm" else "given by --model"
    lines += [f"- Model: `{exp.args.model}` ({model}), "
              f"new head per seed, every parameter trained; {cfg.optim.optimizer}, weight decay "
              f"{cfg.optim.weight_decay}, one learning rate for every layer (no layer decay); schedule "
              f"`{cfg.optim.schedule}`: linear warm-up over the first warm-up fraction of the steps (0: the first step "
              "at the peak rate), then linear decay to 0 at the last step.",
              f"- Grid: peak learning rate {', '.join(f'{lr:g}' for lr in exp.args.learning_rates)} x warm-up "
              f"{', '.join(f'{w:.0%}' for w in WARMUPS)} x seeds {', '.join(map(str, exp.args.seeds))}; every run of a "
              "data set has the same step budget. A run stopped by a non-finite loss fails and is scored as the constant "
              "prediction.",
              "- Failure: test metric below the constant prediction's + 0.02 (tweets: the majority class's test "
              "accuracy + 0.02; NER: entity F1 < 0.02, since predicting every token `O` scores 0).", ""]
    return lines


def report(exp: Experiment, grid: Grid, found: list[dict]) -> list[str]:
    """The tables of the results file."""
    args, lrs, seeds = exp.args, exp.args.learning_rates, exp.args.seeds
    lines = []
    for key in args.datasets:
        lines += [f"## {exp.title(key)}: {DATASETS[key].metric_label} (mean ± sample std over seeds; failures)",
                  "", *cell_table(grid, key, lrs, seeds), ""]
    lines += ["## Warm-up 10% - none, per learning rate (test metric; same seeds; mean and 95% t-interval)", ""]
    rows = []
    for key in args.datasets:
        for lr in lrs:
            none, warm = (values(grid, key, lr, w, "failed", seeds) for w in WARMUPS)
            rows.append([key, f"{lr:g}", protocol.format_interval(*warmup_gain(grid, key, lr, seeds)),
                         f"{int(sum(none))} -> {int(sum(warm))}"])
    lines += protocol.markdown_table(["data set", "learning rate", "Δ test metric", "failed runs (none -> 10%)"], rows)
    lines += ["", "## Learning rate chosen on validation (mean over seeds), per warm-up", ""]
    rows = []
    for key in args.datasets:
        for w, chosen in chosen_on_validation(grid, key, lrs, seeds).items():
            rows.append([key, warmup_label(w), f"{chosen.point:g}", f"{chosen.val_mean:.4f}",
                         protocol.format_mean_std(list(chosen.test.values())),
                         f"{sum(grid[key, chosen.point, w][s]['failed'] for s in seeds)}/{len(seeds)}"])
    lines += protocol.markdown_table(["data set", "warm-up", "chosen learning rate", "validation mean",
                                      "test (mean ± std)", "failed"], rows)
    lines += ["", "## Claims", ""]
    lines += protocol.markdown_table(["claim", "verdict", "numbers"],
                                     [[c["claim"], f"**{c['verdict']}**", c["summary"]] for c in found])
    lines += ["", "## Every run", ""]
    rows = [[key, f"{lr:g}", f"{w:.0%}", s, f"{r['val']:.4f}", f"{r['test']:.4f}", "yes" if r["failed"] else "",
             *((f"diverged at step {r['diverged_at']}", "") if r["diverged_at"] is not None else
               (f"{r['train_loss']:.4f}", f"{r['test_metrics']['loss']:.4f}"))]
            for (key, lr, w), runs in grid.items() for s, r in sorted(runs.items())]
    lines += ["A failed run whose test loss is well below that of the training label frequencies (in the setup) "
              "learned something but not enough in its budget (under-trained); one at that loss collapsed.", ""]
    lines += protocol.markdown_table(["data set", "learning rate", "warm-up", "seed", "validation", "test", "failed",
                                      "last logged train loss", "test loss"], rows)
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load = time.time(), os.getloadavg()[0]
    exp = Experiment(args)
    grid: Grid = {}
    for key in args.datasets:
        for w in WARMUPS:
            for lr in args.learning_rates:   # seeds innermost: they share the compiled step
                grid[key, lr, w] = {s: exp.run(key, lr, w, s) for s in args.seeds}
    found = claims(grid, args.datasets, args.learning_rates, args.seeds)
    stem = os.path.splitext(args.out)[0]
    title = "Learning rate x warm-up: stability of MiniLM fine-tuning on tweets and WNUT-16 NER"
    lines = protocol.header_lines(title, args.command, args.seeds, started, load, ("tokenizers", "scipy", "matplotlib"),
                                  exp.cells.note("runs"))
    lines += setup_lines(exp) + report(exp, grid, found)
    lines += ["", f"![test metric vs learning rate]({os.path.basename(stem)}.png)"]
    plot_panels(f"{stem}.png", grid, {key: exp.title(key) for key in args.datasets}, args.learning_rates, args.seeds,
                exp.baselines, "all-MiniLM-L6-v2" if args.model == "minilm" else os.path.basename(args.model))
    print(protocol.write_results(args.out, lines, title="Learning rate x warm-up stability (experiment 4)",
                                 command=args.command, claims=found, compute=exp.cells.compute()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
