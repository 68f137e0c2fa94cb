"""Batch-norm running statistics after a short fine-tuning: what do they cost at evaluation?

A check behind experiment 1 (``pretrained_vs_scratch.py``), under the protocol of
``experiments/protocol.py``. There EfficientNet-Lite0 learned far less than MobileNetV2 in the same 32
steps (pretrained, 500 MNIST digits: 0.36 vs 0.88 test accuracy) and from scratch stayed at chance
even at n = 4,000. Its batch norm keeps 0.99 of the old running statistics per step (PyTorch momentum
0.01, from TensorFlow's 0.99 decay; MobileNetV2: 0.1), so after 32 steps 0.99^32 = 72% of them are
still ImageNet's (or, from scratch, the init's mean 0 and variance 1) while the weights have moved.

Per (model, init) and seed: the runner (``jt.finetune``, ``experiments/configs/mnist_mobilenet.yaml``
with experiment 1's n = 500 settings: 48x48 digits, batch 32, 32 steps, learning rate 1e-3, one rate
for every layer, 4 validations) trains, keeps and exports its best-validation weights; the test split
is scored twice with those same weights: with the running statistics the run ended with, and with
statistics re-estimated over the 500 training images (:func:`jaxtune.recompute_batch_stats`, PyTorch's
``update_bn``). ``train.seed`` drives head init (every weight, from scratch), data order and dropout.
The learning rate is not searched: the comparison is paired on the same weights, and 1e-3 is the rate
experiment 1 chose on validation for both pretrained CNNs at n = 500. Reported: test accuracy mean ±
sample std, paired differences (re-estimated - running, same seed) with 95% t-intervals. Each (model,
init) is cached as JSON under ``--cache`` (``--verify REGEX``: trained again, it must equal its file).
Writes ``experiments/results/bn_statistics.md``, ``.png`` and ``.json``::

    python experiments/bn_statistics.py                  # 12 runs
    python experiments/bn_statistics.py --quick --cnn-model TINY_MOBILENET --out /tmp/bn/bn_statistics.md
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np

import protocol
from runs import Cells, add_verify_argument

HERE = os.path.dirname(os.path.abspath(__file__))
INITS = {"pretrained": "pretrained", "scratch": "random"}   # arm -> model.init


@dataclasses.dataclass(frozen=True)
class Model:
    """A model of the check: its name, ``model.path`` and batch-norm momentum (PyTorch convention)."""

    name: str
    path: str
    momentum: float


FULL = (Model("efficientnet_lite0", "efficientnet_lite0_imagenet", 0.01),
        Model("mobilenet_v2", "mobilenet_v2_imagenet", 0.1))
N, STEPS, LR = 500, 32, 1e-3
OVERRIDES = ("optim.layer_decay=null", "data.image_size=48", "data.eval_limit=200", "data.batch_size=32",
             f"data.train_limit={N}", f"train.max_steps={STEPS}", f"optim.learning_rate={LR}",
             f"train.eval_every={STEPS // 4}", "train.progress=false", "checkpoint.export_best_hf=true")
QUICK_STEPS = 4
QUICK = ("data.image_size=16", "data.eval_limit=24", "data.test_limit=24", "data.eval_batch_size=24",
         "data.train_limit=32", f"train.max_steps={QUICK_STEPS}", "train.eval_every=2")


def accuracy(predict, variables: dict, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Accuracy of ``predict(variables, images) -> classes`` (evaluation mode: ``variables``' running
    statistics) on ``images``, in batches of ``batch_size``."""
    predicted = np.concatenate([np.asarray(predict(variables, images[i:i + batch_size]))
                                for i in range(0, len(images), batch_size)])
    return float((predicted == labels).mean())


def run_cell(model: Model, init: str, seeds: tuple[int, ...], overrides: tuple[str, ...], work: str) -> dict:
    """Every seed of (``model``, ``init``): the runner's validation accuracy, and test accuracy with the
    running statistics and with statistics re-estimated on the training images."""
    import jax

    import jaxtune as jt
    from jaxtune.run_data import batch_rows

    config = os.path.join(HERE, "configs", "mnist_mobilenet.yaml")
    base = [*OVERRIDES, *overrides, f"model.path={model.path}", f"model.init={INITS[init]}", f"output_dir={work}"]
    cfg = jt.load_config(config, base)
    data = jt.prepare_data(cfg.data, cfg.model.path, None, cfg.model.task)
    rows = lambda split: batch_rows(data, split, np.arange(len(split)), len(split))
    train, test, size = rows(data.train), rows(data.test), cfg.data.eval_batch_size
    record, predict = {"val": [], "test_running": [], "test_recomputed": [], "runner_test": []}, None
    for seed in seeds:
        name = f"{model.name}_{init}_s{seed}"
        result = jt.finetune(config, [*base, f"train.seed={seed}", f"name={name}"], data=data)
        net, variables = jt.from_pretrained(result.paths["export"], task="image_classification",
                                            num_labels=len(data.label_names))
        recomputed = jt.recompute_batch_stats(net, variables, train["images"], batch_size=size)
        predict = predict or jax.jit(lambda v, x, net=net: net.apply(v, x).argmax(-1))   # one architecture per cell
        record["val"].append(float(result.validation_metrics["val_accuracy"]))
        record["runner_test"].append(float(result.test_metrics["accuracy"]))
        record["test_running"].append(accuracy(predict, variables, test["images"], test["labels"], size))
        record["test_recomputed"].append(accuracy(predict, recomputed, test["images"], test["labels"], size))
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    return record


def claims(results: dict[str, dict], steps: int) -> list[dict]:
    """Per (model, init): does re-estimating the statistics raise test accuracy (paired by seed)?"""
    found = []
    for (name, init), r in results.items():
        d, low, high = protocol.paired_interval(r["test_recomputed"], r["test_running"])
        found.append({"claim": f"{name} ({init}): after {steps} steps, batch-norm statistics re-estimated on the "
                               "training images raise test accuracy over the running ones",
                      "verdict": protocol.verdict(low, high),
                      "summary": f"test accuracy re-estimated - running, 95% interval: "
                                 f"{protocol.format_interval(d, low, high, 3)}"})
    return found


def report(results: dict[str, dict], models: list[Model]) -> list[str]:
    momentum = {m.name: m.momentum for m in models}
    rows = []
    for (name, init), r in results.items():
        d, low, high = protocol.paired_interval(r["test_recomputed"], r["test_running"])
        rows.append([name, momentum[name], init, protocol.format_mean_std(r["val"]),
                     protocol.format_mean_std(r["test_running"]), protocol.format_mean_std(r["test_recomputed"]),
                     protocol.format_interval(d, low, high, 4)])
    return ["## Test accuracy, the same weights scored two ways (mean ± sample std over seeds)", "",
            *protocol.markdown_table(["model", "bn momentum", "init", "validation (runner)", "running statistics",
                                      "re-estimated on the training images", "re-estimated - running [95% interval]"],
                                     rows),
            "", "The running-statistics column is the runner's own test accuracy (checked equal per seed)."]


def plot(path: str, results: dict[str, dict], seeds: tuple[int, ...]) -> str:
    """Grouped bars: test accuracy with running and re-estimated statistics, per (model, init)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{name}\n{init}" for name, init in results]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for offset, key, label in ((-0.2, "test_running", "running statistics"),
                               (0.2, "test_recomputed", "re-estimated on the training images")):
        stats = [protocol.mean_std(r[key]) for r in results.values()]
        ax.bar(x + offset, [m for m, _ in stats], 0.4, yerr=[s for _, s in stats], capsize=3, label=label)
    ax.set_xticks(x, labels)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Same weights, two batch-norm statistics: mean ± std over seeds {list(seeds)}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps (a test of the script)")
    parser.add_argument("--cnn-model", help="model.path of the one model with --quick (a tiny MobileNetV2 checkpoint)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train.seed values (default 0 1 2; quick 0 1)")
    parser.add_argument("--cache", help="a JSON file per (model, init), read instead of training when there "
                                        "(default experiments/results/bn_statistics; with --quick a 'runs' folder "
                                        "beside --out)")
    parser.add_argument("--out", help="results file (default experiments/results/bn_statistics.md; with --quick a "
                                      "temporary folder); .png and .json go beside it")
    add_verify_argument(parser)
    args = parser.parse_args(argv)
    if args.quick and not args.cnn_model:
        parser.error("--quick needs --cnn-model (a tiny MobileNetV2 checkpoint)")
    started, load = time.time(), os.getloadavg()[0]
    command = protocol.command_line("bn_statistics.py", argv)
    models = [Model("mobilenet_v2", args.cnn_model, 0.1)] if args.quick else list(FULL)
    overrides = QUICK if args.quick else ()
    seeds = tuple(args.seeds or ((0, 1) if args.quick else (0, 1, 2)))
    default_dir = os.path.join(tempfile.gettempdir(), "jaxtune_quick") if args.quick else os.path.join(HERE, "results")
    out = args.out or os.path.join(default_dir, "bn_statistics.md")
    stem = os.path.splitext(out)[0]
    cells = Cells.for_experiment("bn_statistics", args.cache, out, args.quick, args.verify)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for model in models:
            for init in INITS:
                path = cells.path(model.name, N, init, [OVERRIDES, overrides, model.path, seeds])
                results[model.name, init] = cells.get(path, lambda: run_cell(model, init, seeds, overrides, work),
                                                      f"{model.name} {init}")
    for (name, init), r in results.items():
        if not np.allclose(r["test_running"], r["runner_test"], atol=1e-6):
            raise SystemExit(f"{name} ({init}): the exported weights score {r['test_running']} with their running "
                             f"statistics, the runner reported {r['runner_test']}; the two must be the same weights")
    steps = QUICK_STEPS if args.quick else STEPS
    found = claims(results, steps)
    lines = protocol.header_lines("Batch-norm running statistics after a short fine-tuning", command, seeds,
                                  started, load, ("scipy", "matplotlib"), cells.note("(model, init) results"))
    lines += ["## Protocol", "",
              f"- `experiments/configs/mnist_mobilenet.yaml` with `{'`, `'.join(OVERRIDES + overrides)}`; per model "
              f"and init, `model.path` ({', '.join(f'{m.name}: `{m.path}`' for m in models)}) and `model.init`.",
              "- Each seed's best-validation weights are exported and scored on the test split twice: with the "
              "running statistics the run ended with, and with statistics re-estimated over the training images "
              "(`jt.recompute_batch_stats`: the average of each batch's statistics).",
              f"- Batch-norm momentum (PyTorch convention): {', '.join(f'{m.name} {m.momentum:g}' for m in models)}; "
              f"after {steps} steps a share (1 - momentum)^{steps} of the running statistics is still the starting "
              f"one: {', '.join(f'{m.name} {(1 - m.momentum) ** steps:.2f}' for m in models)}.", ""]
    lines += report(results, models)
    lines += ["", "## Claims", "", *(f"- {c['claim']}: **{c['verdict']}** ({c['summary']})." for c in found)]
    plot(f"{stem}.png", results, seeds)
    lines += ["", f"![test accuracy with running and re-estimated statistics]({os.path.basename(stem)}.png)"]
    print(protocol.write_results(out, lines, title="Batch-norm statistics after a short fine-tuning",
                                 command=command, claims=found, compute=cells.compute()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
