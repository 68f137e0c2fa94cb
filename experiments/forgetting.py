"""How much of task A survives fine-tuning on task B, and what L2-SP, weight averaging and WiSE-FT keep.

Sequential fine-tuning of all-MiniLM-L6-v2 on real data, through the experiment runner:

1. **A**: tweet sentiment (3 classes), ``experiments/configs/tweets_minilm.yaml``; the best
   checkpoint is exported (weights + tokenizer).
2. **B**: WNUT-16 NER, ``experiments/configs/wnut_ner_minilm.yaml``, starting from A's export, four
   ways:
   * ``plain``   the config as it is;
   * ``l2sp``    ``optim.l2_sp=S`` towards A's weights (the new token head exempt: ``l2_sp: 0``),
     for each S of ``--l2-sp``;
   * ``l2sp decoupled``  the same with ``optim.l2_sp_decoupled=true`` (``jt.anchor_decay``: pulled
     towards A's weights after AdamW, as its weight decay), for each S of ``--l2-sp-decoupled``;
   * ``ema``     ``optim.weight_average=ema`` (decay D): validation, test and export use the average;
   * ``lora``    LoRA factors (rank R, alpha 2R) on every query/value kernel and the new head train,
     the rest of the encoder stays frozen (``jt.lora``); exported merged;
   * ``wise-ft`` no training: WiSE-FT, A's encoder interpolated with plain B's, ``α`` in 0.25/0.5/0.75
     (B's head kept).
3. For each B model: **A accuracy** (tweet test split, A's pooler + classifier on top of B's
   encoder), **B entity F1** and loss (WNUT test split, B's head), and the encoder's drift from A
   (``jt.param_drift``).

B runs at ``--b-learning-rate`` 5e-4 for ``--b-epochs`` 4: at the config's 1e-4 for 3 epochs
MiniLM's entity F1 on this small WNUT split stays near 0 (it starts finding entities after about 350
steps at 5e-4).

Results go to ``experiments/results/forgetting.md``. One seed; about 25 minutes on 2 CPU cores::

    python experiments/forgetting.py
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import numpy as np

import jaxtune as jt
from jaxtune.experiment import build, epoch_batches, evaluate, finetune

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
ENCODER = ("embeddings", "encoder")  # what task B changes under A's head (A's pooler is unused by B)


def _run(config: str, name: str, out: str, overrides: list[str]) -> jt.experiment.RunResult:
    return finetune(os.path.join(CONFIGS, config),
                    [f"name={name}", f"output_dir={out}", "checkpoint.export_best_hf=true", "train.progress=false",
                     *overrides])


def _with_encoder(params: dict, encoder_from: dict) -> dict:
    bert = dict(params["bert"], **{k: encoder_from["bert"][k] for k in ENCODER})
    return dict(params, bert=bert)


def _score(setup, params) -> dict[str, float]:
    data = setup.data
    batches = epoch_batches(data, data.test, setup.config.data.eval_batch_size, seed=None)
    state = setup.initial_state.replace(params=params)
    return evaluate(setup.task, setup.eval_step, state, batches, data.label_names)[0]


def _load_params(export_dir: str, task: str) -> dict:
    return jt.from_pretrained(export_dir, task=task)[1]["params"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--l2-sp", type=float, nargs="*", default=[0.1, 1.0], help="L2-SP strengths (one B run each)")
    parser.add_argument("--l2-sp-decoupled", type=float, nargs="*", default=[],
                        help="strengths of decoupled L2-SP (jt.anchor_decay; one B run each)")
    parser.add_argument("--ema-decay", type=float, default=0.99, help="EMA decay of the ema variant (0: no ema run)")
    parser.add_argument("--lora-rank", type=int, default=8, help="rank of the lora variant (0: no lora run)")
    parser.add_argument("--b-seed", type=int, default=0, help="train.seed of the B runs (head init, batch order, dropout)")
    parser.add_argument("--b-learning-rate", type=float, default=5e-4)
    parser.add_argument("--b-epochs", type=float, default=4)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "forgetting.md"))
    args = parser.parse_args(argv)
    start = time.time()
    work = tempfile.mkdtemp(prefix="jaxtune_forgetting_")

    a = _run("tweets_minilm.yaml", "A_tweets", work, [])
    a_export = a.paths["export"]
    b_common = [f"model.path={a_export}", f"optim.learning_rate={args.b_learning_rate}", f"train.epochs={args.b_epochs}",
                f"train.seed={args.b_seed}"]
    head_exempt = ('optim.rules=[{pattern: "classifier/.*", name: head, l2_sp: 0.0}, '
                   '{pattern: ".*/(bias|LayerNorm/scale)", name: no_decay, weight_decay: 0.0}, '
                   '{pattern: ".*", name: decay}]')
    variants = {"plain": []}
    for strength in args.l2_sp:
        variants[f"l2sp (S={strength:g})"] = [head_exempt, f"optim.l2_sp={strength}"]
    for strength in args.l2_sp_decoupled:
        variants[f"l2sp decoupled (S={strength:g})"] = [head_exempt, f"optim.l2_sp={strength}",
                                                        "optim.l2_sp_decoupled=true"]
    if args.ema_decay:
        variants[f"ema (D={args.ema_decay:g})"] = ["optim.weight_average=ema", f"optim.weight_average_decay={args.ema_decay}"]
    if args.lora_rank:
        variants[f"lora (r={args.lora_rank} on q, v)"] = [
            'optim.rules=[{pattern: ".*attention/self/(query|value)/kernel", name: lora, '
            f'lora: {{rank: {args.lora_rank}}}}}, {{pattern: "classifier/.*", name: head}}, '
            '{pattern: ".*", name: frozen, frozen: true}]']
    b_runs = {name: _run("wnut_ner_minilm.yaml", f"B_{i}", work, b_common + overrides)
              for i, (name, overrides) in enumerate(variants.items())}

    a_setup = build(os.path.join(a.paths["run_dir"], "config.yaml"), [f"model.path={a_export}"])
    b_setup = build(os.path.join(b_runs["plain"].paths["run_dir"], "config.yaml"))
    a_params = a_setup.initial_state.params           # A's best weights, as exported
    a_encoder = {"bert": {k: a_params["bert"][k] for k in ENCODER}}
    labels = jax.tree.map(lambda _: "encoder", a_encoder)

    rows = [("A only (before B)", _score(a_setup, a_params)["accuracy"], None, None, 0.0)]
    b_params = {name: _load_params(run.paths["export"], "token_classification") for name, run in b_runs.items()}
    for name, params in b_params.items():
        encoder = {"bert": {k: params["bert"][k] for k in ENCODER}}
        b_test = b_runs[name].test_metrics
        rows.append((f"B {name}", _score(a_setup, _with_encoder(a_params, params))["accuracy"],
                     b_test["entity_f1"], b_test["loss"], jt.param_drift(encoder, a_encoder, labels)["encoder"]))
    plain_b = b_params["plain"]
    plain_encoder = {"bert": {k: plain_b["bert"][k] for k in ENCODER}}
    for alpha in (0.25, 0.5, 0.75):
        mixed = jt.interpolate_params(a_encoder, plain_encoder, alpha)
        b_test = _score(b_setup, _with_encoder(plain_b, mixed))
        rows.append((f"B wise-ft (α={alpha:g}, from plain)", _score(a_setup, _with_encoder(a_params, mixed))["accuracy"],
                     b_test["entity_f1"], b_test["loss"], jt.param_drift(mixed, a_encoder, labels)["encoder"]))

    lines = ["# Catastrophic forgetting: tweets (A) then WNUT-16 NER (B), all-MiniLM-L6-v2", "",
             f"Written by `python experiments/forgetting.py` on {time.strftime('%Y-%m-%d')} "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}); "
             f"{(time.time() - start) / 60:.1f} min. One seed: B runs with train.seed {args.b_seed}.", "",
             f"A: {a.steps} steps, test accuracy {a.test_metrics['accuracy']:.4f}. "
             f"B: from A's export, lr {args.b_learning_rate:g}, {args.b_epochs:g} epochs, best validation entity F1 "
             "checkpoint. "
             "A accuracy after B: A's pooler and classifier on B's encoder, tweet test split "
             f"({len(a_setup.data.test)} tweets). Drift: ||encoder - A's encoder|| / ||A's encoder||.", "",
             "| model | A accuracy (tweets) | B entity F1 (WNUT) | B loss | encoder drift from A |",
             "|---|---|---|---|---|"]
    cell = lambda x: "-" if x is None else f"{x:.4f}"
    for name, acc, f1, loss, drift in rows:
        lines.append(f"| {name} | {acc:.4f} | {cell(f1)} | {cell(loss)} | {drift:.4f} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
