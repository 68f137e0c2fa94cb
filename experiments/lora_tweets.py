"""LoRA vs full fine-tuning vs a linear probe on real tweet sentiment, over seeds.

all-MiniLM-L6-v2 on 3-class tweet sentiment (4,000 training tweets, 1 epoch of batch 32, validation
and test subsets of 1,000), three strategies with the same data, schedule and step budget:

* ``full``  every weight trains (the family's default rules: no weight decay on biases and LayerNorm),
  learning rate 1e-4 with layer-wise decay 0.8
  (``experiments/configs/tweets_minilm.yaml``'s settings);
* ``lora``  LoRA factors (rank 8, alpha 16) on every attention query/value kernel plus the classifier;
  the rest of the encoder and the pooler stay frozen; learning rate 1e-3
  (``experiments/configs/tweets_minilm_lora.yaml``);
* ``probe`` the classifier alone on the frozen encoder, learning rate 1e-3.

The learning rates are fixed per strategy (the configs' values), not tuned on validation here: read
the numbers as "these settings", not as each strategy's best. Every strategy runs once per seed
(``train.seed`` drives head init, batch order and dropout) through ``jt.sweep``, which writes
``sweep.md`` (test mean ± sample std per strategy, paired differences between strategies with 95%
t-intervals). This script adds the trainable-parameter counts and writes everything to
``experiments/results/lora_tweets.md``::

    python experiments/lora_tweets.py                  # seeds 0, 1, 2
    python experiments/lora_tweets.py --seeds 0 --out /tmp/lora.md
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import jax

import jaxtune as jt

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE_RULES = [{"pattern": "classifier/.*", "name": "head"},
               {"pattern": ".*", "name": "frozen", "frozen": True}]
STRATEGIES = {
    "full": {"optim.rules": None, "optim.learning_rate": 1e-4, "optim.layer_decay": 0.8},
    "lora": {},
    "probe": {"optim.rules": PROBE_RULES},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", default="runs", help="where the runs and the sweep report go")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "lora_tweets.md"))
    args = parser.parse_args(argv)
    start = time.time()
    load = os.getloadavg()[0]
    command = shlex.join(["python", "experiments/lora_tweets.py", *(sys.argv[1:] if argv is None else argv)])
    result = jt.sweep(os.path.join(HERE, "configs", "tweets_minilm_lora.yaml"), seeds=args.seeds,
                      strategies=STRATEGIES, overrides=[f"output_dir={args.output_dir}", "train.progress=false"],
                      command=command)
    counts = {row["strategy"]: jt.read_result(row["run_dir"]).trainable_params for row in result.rows}
    full = counts["full"]
    lines = ["# LoRA vs full fine-tuning vs linear probe: all-MiniLM-L6-v2 on tweet sentiment", "",
             f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
             f"load average {load:.1f} at the start); {(time.time() - start) / 60:.1f} min. "
             f"Seeds {', '.join(map(str, args.seeds))} (head init, batch order, dropout).", "",
             "| strategy | trained parameters | share of full |", "|---|---|---|"]
    lines += [f"| {name} | {n:,} | {n / full:.2%} |" for name, n in counts.items()]
    with open(result.paths["report"], encoding="utf-8") as f:
        lines += ["", "## The sweep's report", "", f.read().strip()]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
