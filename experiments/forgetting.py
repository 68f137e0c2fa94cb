"""How much of task A survives fine-tuning on task B, and what each remedy keeps (issue #15, experiment 3).

all-MiniLM-L6-v2, A: tweet sentiment (``experiments/configs/tweets_minilm.yaml``, trained once, seed 0,
best checkpoint exported), then B: WNUT-16 NER (``experiments/configs/wnut_ner_minilm.yaml``) from A's
export, every B run with the same epochs and schedule (equal step budgets), one run per seed and method:

* ``plain``           full fine-tuning; its learning rate is chosen from ``--learning-rates`` on B's
  validation entity F1 (seed 0) and used by every method below except ``lora`` and the LP stage;
* ``l2sp`` / ``l2sp_decoupled``  L2-SP towards A's weights (B's new head exempt), coupled (a loss term
  through AdamW) or decoupled (``jt.anchor_decay``), strength chosen from ``--l2sp`` / ``--l2sp-decoupled``;
* ``ema`` / ``uniform``  validation, test and export on the EMA (decay ``--ema-decay``) or on the uniform
  average of the last half of the steps;
* ``wiseft``          no training: A's encoder interpolated with plain B's, ``(1-α) θ_A + α θ_B`` for α in
  ``--alphas``, scored with B's own head and with a head re-fitted on the interpolated encoder
  (``--refit-steps`` Adam steps on the frozen token features of ``--refit-examples`` training sentences,
  starting from B's head), every α on validation; α chosen per head on validation (mean over seeds),
  test read at the chosen α only;
* ``lpft``            LP-FT: B's head trained alone on A's frozen encoder (``--lp-learning-rate``, 1 epoch),
  then everything fine-tuned from there; the probe stage is reported too (``lp``);
* ``lora``            LoRA (rank 8 on every query/value kernel) and B's head; learning rate from
  ``--lora-learning-rates`` on B's validation F1 (seed 0);
* ``rehearsal5`` / ``rehearsal20``  5% / 20% of the examples of every step are A's training tweets, trained
  with A's head (``rehearsal:`` config section; A accuracy is that co-trained head's).

Every hyperparameter is chosen on VALIDATION only (seed 0; strengths by A validation accuracy + B
validation entity F1); test numbers are read once per chosen setting. A accuracy: A's pooler and
classifier on the B model's encoder, on the full tweet test split; B: entity F1 on the WNUT test split.
Seeds (``--seeds``, ``train.seed`` of the B runs) vary B's head init, batch order and dropout.

Every (method, seed) result is cached as JSON under ``--cache`` (and every run under ``--work``), so an
invocation runs only what is missing, then rewrites the whole results file (and its Pareto PNG) from
every cached result of the requested seeds::

    python experiments/forgetting.py                                   # everything, seeds 0, 1, 2
    python experiments/forgetting.py --variants plain,rehearsal5 --seeds 0,1
    python experiments/forgetting.py --variants plain --verify '^(A/before|plain/lr0.0005/seed0)$'   # same numbers?
    python experiments/forgetting.py --quick --model TINY_BERT_DIR --work /tmp/w --cache /tmp/c --out /tmp/f.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune as jt
from jaxtune.experiment import build, epoch_batches, evaluate, finetune
from jaxtune.models import bert

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import (command_line, compute_summary, cpu_description, format_interval, format_mean_std,  # noqa: E402
                      markdown_table, mean_std, paired_interval, verdict, write_results)
from runs import Cells, add_verify_argument, processors, shown_path, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")
VARIANTS = ("plain", "l2sp", "l2sp_decoupled", "ema", "uniform", "wiseft", "lpft", "lora", "rehearsal5", "rehearsal20")
ENCODER = ("embeddings", "encoder")  # what B changes under A's head (A's pooler is unused by B)
SELECTION_SEED = 0
HEAD_EXEMPT = ('optim.rules=[{pattern: "classifier/.*", name: head, l2_sp: 0.0}, '
               '{pattern: ".*/(bias|LayerNorm/scale)", name: no_decay, weight_decay: 0.0}, {pattern: ".*", name: decay}]')
PROBE = 'optim.rules=[{pattern: "classifier/.*", name: head}, {pattern: ".*", name: frozen, frozen: true}]'
LORA = ('optim.rules=[{pattern: ".*attention/self/(query|value)/kernel", name: lora, lora: {rank: 8}}, '
        '{pattern: "classifier/.*", name: head}, {pattern: ".*", name: frozen, frozen: true}]')
QUICK_A = ["data.train_limit=48", "data.eval_limit=16", "data.test_limit=24", "data.max_length=32",
           "train.max_steps=3", "train.eval_every=3"]
QUICK_B = ["data.train_limit=32", "data.eval_limit=16", "data.test_limit=16", "data.max_length=32",
           "train.max_steps=3", "train.eval_every=3", "data.eval_batch_size=32"]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values of the B runs")
    parser.add_argument("--learning-rates", default="2e-4,5e-4,1e-3", help="plain B's grid (B validation F1)")
    # Strength 0.001 and LoRA rates 4e-3 and 8e-3 added on 2026-12-01: coupled L2-SP chose 0.01 and LoRA 2e-3, then
    # 4e-3, each at its grid's edge
    parser.add_argument("--lora-learning-rates", default="5e-4,1e-3,2e-3,4e-3,8e-3")
    parser.add_argument("--l2sp", default="0.001,0.01,0.1,1", help="coupled L2-SP strengths (validation A + B)")
    parser.add_argument("--l2sp-decoupled", default="1,10,100", help="decoupled L2-SP strengths (validation A + B)")
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    parser.add_argument("--refit-steps", type=int, default=300)
    parser.add_argument("--refit-examples", type=int, default=1000, help="training sentences of the head re-fit")
    parser.add_argument("--lp-learning-rate", type=float, default=5e-3)
    parser.add_argument("--b-epochs", type=float, default=4)
    parser.add_argument("--model", default="minilm", help="A's starting checkpoint")
    parser.add_argument("--quick", action="store_true", help="tiny data and 3-step runs: checks the pipeline only")
    parser.add_argument("--work", default="runs/forgetting", help="run directories (checkpoints, exports)")
    parser.add_argument("--cache", default=os.path.join(HERE, "results", "forgetting"), help="per-run result JSON")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "forgetting.md"))
    add_verify_argument(parser)
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.command = command_line("forgetting.py", without_variants(sys.argv[1:] if argv is None else argv))
    return args


def without_variants(argv: list[str]) -> list[str]:
    """``argv`` without ``--variants``: the report covers every cached variant, so the command that
    writes the whole results file is the one that runs them all (cached ones are read, not rerun).

    Example::

        >>> without_variants(["--variants", "lpft", "--seeds", "0,1,2", "--variants=ema"])
        ['--seeds', '0,1,2']
    """
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--variants":
            skip = True
        elif not arg.startswith("--variants="):
            kept.append(arg)
    return kept


class Experiment:
    """A's run and evaluation setup, the B runs' common overrides, and the result cache.

    With ``--verify REGEX``, a cached result whose key (e.g. ``plain/lr0.0005/seed0``; ``A/before``
    for A's own scores, which trains A again) matches is computed again, its runs started over, and
    must equal its file (``runs.Cells``; the ``run`` directory it names may differ)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cells = Cells(args.cache, args.verify, unchecked=("run",))
        self.start_over = False   # True while a --verify'd result is computed: its runs train from step 0
        self.a = self._finetune("tweets_minilm.yaml", "A_tweets", [f"model.path={args.model}",
                                                                     *(QUICK_A if args.quick else [])],
                                start_over=self.cells.will_check(self._path("A/before"), "A/before"))
        self.a_export = self.a.paths["export"]
        test_limit = [] if args.quick else ["data.test_limit=null"]    # A on the full tweet test split
        self.a_setup = build(os.path.join(self.a.paths["run_dir"], "config.yaml"),
                             [f"model.path={self.a_export}", *test_limit])
        self.a_params = self.a_setup.initial_state.params
        self.a_encoder = {"bert": {k: self.a_params["bert"][k] for k in ENCODER}}
        self.b_common = [f"model.path={self.a_export}", f"train.epochs={args.b_epochs}",
                         *(QUICK_B if args.quick else [])]
        self._b_setup = None

    def _finetune(self, config: str, name: str, overrides: list[str], start_over: bool = False):
        return finetune(os.path.join(CONFIGS, config),
                        [f"name={name}", f"output_dir={self.args.work}", "checkpoint.export_best_hf=true",
                         "train.progress=false", *overrides], overwrite=start_over or self.start_over)

    def _path(self, key: str) -> str:
        return os.path.join(self.args.cache, f"{key}.json")

    def cached(self, key: str, compute) -> dict:
        """The JSON record ``key`` from the cache, computed (and stored, with its ``seconds``) when missing,
        or computed again and checked against it when ``--verify`` matches ``key``."""
        self.start_over = self.cells.will_check(self._path(key), key)
        try:
            return self.cells.get(self._path(key), compute, key)
        finally:
            self.start_over = False

    def write(self, key: str, record: dict) -> dict:
        """Stores ``record`` as the cache's JSON record ``key`` (replacing it) and returns it."""
        write_json(self._path(key), record)
        return record

    def b_run(self, tag: str, seed: int, overrides: list[str], config: str = "wnut_ner_minilm.yaml"):
        return self._finetune(config, f"B_{tag}_s{seed}", [*self.b_common, f"train.seed={seed}", *overrides])

    @property
    def b_setup(self):
        if self._b_setup is None:
            self._b_setup = build(os.path.join(CONFIGS, "wnut_ner_minilm.yaml"), self.b_common)
        return self._b_setup

    def a_scores(self, encoder_params: dict, splits: tuple[str, ...] = ("validation", "test")) -> dict:
        """A accuracy (``a_val`` and / or ``a_test``) with A's pooler and classifier on ``encoder_params``' encoder."""
        params = with_encoder(self.a_params, encoder_params)
        return {f"a_{'val' if split == 'validation' else split}": score(self.a_setup, params, split)["accuracy"]
                for split in splits}

    def drift(self, params: dict) -> float:
        encoder = {"bert": {k: params["bert"][k] for k in ENCODER}}
        return jt.param_drift(encoder, self.a_encoder, jax.tree.map(lambda _: "encoder", self.a_encoder))["encoder"]

    def record(self, result, rehearsal: bool = False) -> dict:
        """A trained B run's numbers: A and B accuracy on validation and test, encoder drift, steps."""
        params = jt.from_pretrained(result.paths["export"], task="token_classification")[1]["params"]
        if rehearsal:   # A's head trained beside B: the runner scored it
            a = {"a_val": result.validation_metrics["val_old_accuracy"], "a_test": result.test_metrics["old_accuracy"]}
        else:
            a = self.a_scores(params)
        return {**a, "b_val": result.validation_metrics["val_entity_f1"], "b_test": result.test_metrics["entity_f1"],
                "drift": self.drift(params), "steps": result.steps, "run": result.paths["run_dir"]}


def with_encoder(params: dict, encoder_from: dict) -> dict:
    return dict(params, bert=dict(params["bert"], **{k: encoder_from["bert"][k] for k in ENCODER}))


def score(setup, params: dict, split: str) -> dict:
    data = setup.data
    examples = data.validation if split == "validation" else data.test
    batches = epoch_batches(data, examples, setup.config.data.eval_batch_size, seed=None)
    return evaluate(setup.task, setup.eval_step, setup.initial_state.replace(params=params), batches,
                    data.label_names)[0]


def select(exp: Experiment, name: str, candidates: dict[str, list[str]], objective: str, rehearsal=False) -> str:
    """Runs every candidate at the selection seed (cached) and returns the label with the best validation
    ``objective`` (``"b"``: B entity F1; ``"a+b"``: A accuracy + B entity F1)."""
    def value(label: str) -> float:
        r = exp.cached(f"{name}/{label}/seed{SELECTION_SEED}",
                       lambda: exp.record(exp.b_run(f"{name}_{label}", SELECTION_SEED, candidates[label]), rehearsal))
        return r["b_val"] + (r["a_val"] if objective == "a+b" else 0.0)

    scores = {label: value(label) for label in candidates}
    chosen = max(scores, key=lambda label: scores[label])
    exp.write(f"{name}/selection", {"objective": objective, "scores": scores, "chosen": chosen})   # grids may grow
    return chosen


def trained_variant(exp: Experiment, name: str, candidates: dict[str, list[str]], objective: str,
                    rehearsal: bool = False) -> None:
    label = select(exp, name, candidates, objective, rehearsal) if len(candidates) > 1 else next(iter(candidates))
    for seed in exp.args.seeds:
        exp.cached(f"{name}/{label}/seed{seed}",
                   lambda: exp.record(exp.b_run(f"{name}_{label}", seed, candidates[label]), rehearsal))


def plain_lr(exp: Experiment) -> str:
    grid = {f"lr{lr:g}": [f"optim.learning_rate={lr}"] for lr in _floats(exp.args.learning_rates)}
    return select(exp, "plain", grid, "b") if len(grid) > 1 else next(iter(grid))


def token_features(setup, params: dict, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder outputs and tags of the labelled tokens of the first ``limit`` training sentences."""
    backbone = bert.BertBackbone(setup.model.config, add_pooling_layer=False)
    apply = jax.jit(lambda p, b: backbone.apply({"params": p}, b["input_ids"], b["attention_mask"],
                                                b.get("token_type_ids"), True)[0])
    feats, tags = [], []
    for batch in epoch_batches(setup.data, setup.data.train[:limit], setup.config.data.eval_batch_size, seed=None):
        hidden = np.asarray(apply(params["bert"], {k: v for k, v in batch.items() if k != "example_mask"}))
        keep = (batch["labels"] != -100) & batch["example_mask"][:, None]
        feats.append(hidden[keep])
        tags.append(batch["labels"][keep])
    return np.concatenate(feats), np.concatenate(tags)


def refit_head(head: dict, feats: np.ndarray, tags: np.ndarray, steps: int, seed: int) -> dict:
    """B's token head re-fitted on frozen features: ``steps`` Adam steps (lr 1e-3) on batches of 512 tokens."""
    tx = optax.adam(1e-3)

    @jax.jit
    def step(head, opt_state, x, y):
        loss = lambda h: optax.softmax_cross_entropy_with_integer_labels(x @ h["kernel"] + h["bias"], y).mean()
        updates, opt_state = tx.update(jax.grad(loss)(head), opt_state)
        return optax.apply_updates(head, updates), opt_state

    head = jax.tree.map(jnp.asarray, head)
    opt_state, rng = tx.init(head), np.random.default_rng(seed)
    for _ in range(steps):
        rows = rng.integers(0, len(tags), min(512, len(tags)))
        head, opt_state = step(head, opt_state, feats[rows], tags[rows])
    return jax.device_get(head)


def _wiseft_params(exp: Experiment, plain_export: str, alpha: float) -> tuple[dict, dict]:
    """``(mixed, refit)``: plain B's params (its export) with A's encoder interpolated in at ``alpha``, with
    B's own head and with a head re-fitted on the mixed encoder's frozen token features (seed 0)."""
    b_params = jt.from_pretrained(plain_export, task="token_classification")[1]["params"]
    b_encoder = {"bert": {k: b_params["bert"][k] for k in ENCODER}}
    mixed = with_encoder(b_params, jt.interpolate_params(exp.a_encoder, b_encoder, alpha))
    feats, tags = token_features(exp.b_setup, mixed, exp.args.refit_examples)
    return mixed, dict(mixed, classifier=refit_head(b_params["classifier"], feats, tags, exp.args.refit_steps, 0))


def wiseft_seed(exp: Experiment, plain_export: str) -> dict:
    """WiSE-FT of one plain B run on VALIDATION: per α, A accuracy and B entity F1 with B's head and with
    a re-fitted one (test is read only at the α chosen from these: :func:`wiseft_test`)."""
    points = []
    for alpha in _floats(exp.args.alphas):
        mixed, refit = _wiseft_params(exp, plain_export, alpha)
        points.append({"alpha": alpha, **exp.a_scores(mixed, ("validation",)),
                       "own_b_val": score(exp.b_setup, mixed, "validation")["entity_f1"],
                       "refit_b_val": score(exp.b_setup, refit, "validation")["entity_f1"], "drift": exp.drift(mixed)})
    return {"points": points}


def wiseft_test(exp: Experiment, plain_export: str, alpha: float) -> dict:
    """Test numbers of one plain B run's WiSE-FT at ``alpha``: A accuracy (A's head: the same for both B
    heads) and B entity F1 with B's own and the re-fitted head."""
    mixed, refit = _wiseft_params(exp, plain_export, alpha)
    return {"alpha": alpha, **exp.a_scores(mixed, ("test",)),
            "own_b_test": score(exp.b_setup, mixed, "test")["entity_f1"],
            "refit_b_test": score(exp.b_setup, refit, "test")["entity_f1"], "drift": exp.drift(mixed)}


def chosen_alphas(curves: dict[float, dict[int, dict]]) -> dict[str, float]:
    """Per B head (``own``, ``refit``): the α with the best validation A accuracy + B entity F1, averaged
    over seeds.

    Example::

        >>> chosen_alphas({0.0: {0: {"a_val": 0.6, "own_b_val": 0.1, "refit_b_val": 0.3}},
        ...                1.0: {0: {"a_val": 0.3, "own_b_val": 0.5, "refit_b_val": 0.5}}})
        {'own': 1.0, 'refit': 0.0}
    """
    return {head: max(curves, key=lambda a: np.mean([p["a_val"] + p[f"{head}_b_val"] for p in curves[a].values()]))
            for head in ("own", "refit")}


def run_variant(exp: Experiment, name: str, lr: str | None) -> None:
    """Train (or read) every cell of method ``name``; ``lr`` is plain's chosen rate (``lr0.0005``), which
    every method but LoRA trains with (None when LoRA is all that runs)."""
    args, lr_override = exp.args, [f"optim.learning_rate={lr[2:]}"] if lr else None
    if name == "plain":
        trained_variant(exp, "plain", {lr: lr_override}, "b")
    elif name in ("l2sp", "l2sp_decoupled"):
        extra = ["optim.l2_sp_decoupled=true"] if name == "l2sp_decoupled" else []
        grid = {f"S{s:g}": [*lr_override, HEAD_EXEMPT, f"optim.l2_sp={s}", *extra]
                for s in _floats(args.l2sp if name == "l2sp" else args.l2sp_decoupled)}
        trained_variant(exp, name, grid, "a+b")
    elif name == "ema":
        trained_variant(exp, name, {f"D{args.ema_decay:g}": [*lr_override, "optim.weight_average=ema",
                                                              f"optim.weight_average_decay={args.ema_decay}"]}, "a+b")
    elif name == "uniform":
        trained_variant(exp, name, {"last_half": [*lr_override, "optim.weight_average=uniform",
                                                  "optim.weight_average_start=0.5"]}, "a+b")
    elif name == "lora":
        grid = {f"lr{x:g}": [f"optim.learning_rate={x}", LORA] for x in _floats(args.lora_learning_rates)}
        trained_variant(exp, name, grid, "b")
    elif name == "lpft":
        for seed in args.seeds:
            probe = exp.cached(f"lp/lr{args.lp_learning_rate:g}/seed{seed}", lambda: exp.record(exp.b_run(
                "lp", seed, [f"optim.learning_rate={args.lp_learning_rate}", "train.epochs=1", PROBE])))
            exp.cached(f"lpft/{lr}/seed{seed}", lambda: exp.record(exp.b_run(
                "lpft", seed, [*lr_override, f"model.path={os.path.join(probe['run'], 'best_hf')}"])))
    elif name.startswith("rehearsal"):
        fraction = int(name[len("rehearsal"):]) / 100
        a_data = jt.load_config(os.path.join(exp.a.paths["run_dir"], "config.yaml")).data
        old = {**vars(a_data), "test_limit": a_data.test_limit if args.quick else None}
        trained_variant(exp, name, {f"f{fraction:g}": [
            *lr_override, f"rehearsal.fraction={fraction}", f"rehearsal.head_from={exp.a_export}",
            *(f"rehearsal.data.{k}={json.dumps(v)}" for k, v in old.items())]}, "a+b", rehearsal=True)
    elif name == "wiseft":
        run_variant(exp, "plain", lr)
        # plain's runs again: a finished run is read back, one missing (a cache from another machine) trains again
        plain = lambda seed: exp.b_run(f"plain_{lr}", seed, lr_override).paths["export"]
        for seed in args.seeds:
            exp.cached(f"wiseft/seed{seed}", lambda: wiseft_seed(exp, plain(seed)))
        for alpha in sorted(set(chosen_alphas(wiseft_curves(args.cache, args.seeds)).values())):
            for seed in args.seeds:
                exp.cached(f"wiseft/a{alpha:g}/seed{seed}", lambda: wiseft_test(exp, plain(seed), alpha))


def _chosen(cache: str, name: str) -> str | None:
    path = os.path.join(cache, name, "selection.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)["chosen"]
    folder = os.path.join(cache, name)
    labels = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) if os.path.isdir(folder) else []
    return labels[0] if len(labels) == 1 else None


def _load(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


LABELS = {"plain": "plain", "l2sp": "L2-SP coupled", "l2sp_decoupled": "L2-SP decoupled", "ema": "EMA",
          "uniform": "uniform average", "lp": "linear probe (LP stage)", "lpft": "LP-FT", "lora": "LoRA",
          "rehearsal5": "rehearsal 5%", "rehearsal20": "rehearsal 20%"}


def method_rows(cache: str, seeds: list[int]) -> dict[str, dict]:
    """Every cached method: ``{label: {"setting", "seeds": {seed: record}}}`` (WiSE-FT at the α chosen on
    validation, per head)."""
    rows = {}
    for name in ("plain", "l2sp", "l2sp_decoupled", "ema", "uniform", "lp", "lpft", "lora", "rehearsal5",
                 "rehearsal20"):
        chosen = _chosen(cache, name)
        if chosen is None:
            continue
        records = {s: _load(os.path.join(cache, name, chosen, f"seed{s}.json")) for s in seeds}
        records = {s: r for s, r in records.items() if r is not None}
        if records:
            rows[LABELS[name]] = {"setting": chosen, "seeds": records}
    curves = wiseft_curves(cache, seeds)
    for head, alpha in (chosen_alphas(curves) if curves else {}).items():
        tests = {s: _load(os.path.join(cache, "wiseft", f"a{alpha:g}", f"seed{s}.json")) for s in curves[alpha]}
        records = {s: {"a_test": t["a_test"], "b_test": t[f"{head}_b_test"], "drift": t["drift"]}
                   for s, t in tests.items() if t is not None}
        if records:
            rows[f"WiSE-FT, {'B' if head == 'own' else 're-fitted'} head"] = {"setting": f"α={alpha:g}",
                                                                             "seeds": records}
    return rows


def wiseft_curves(cache: str, seeds: list[int]) -> dict[float, dict[int, dict]]:
    """``{alpha: {seed: point}}`` of the cached WiSE-FT seeds (validation numbers)."""
    curves: dict[float, dict[int, dict]] = {}
    for s in seeds:
        record = _load(os.path.join(cache, "wiseft", f"seed{s}.json"))
        for point in (record or {}).get("points", []):
            curves.setdefault(point["alpha"], {})[s] = point
    return curves


def claims(rows: dict[str, dict]) -> list[dict]:
    """Per method run beside plain on at least 2 common seeds, two claims with verdicts from paired 95%
    intervals: it forgets less of A (A test accuracy, method - plain) and it learns B less well (B test
    entity F1, plain - method): the "learns less, forgets less" pattern reported for LoRA.

    Example::

        claims(method_rows("experiments/results/forgetting", [0, 1, 2]))[0]["claim"]
        # 'LoRA forgets less of A (tweet sentiment) than plain fine-tuning on B'
    """
    plain = rows.get("plain", {}).get("seeds", {})
    found = []
    for label, row in rows.items():
        common = sorted(set(row["seeds"]) & set(plain))
        if label == "plain" or len(common) < 2:
            continue
        pick = lambda seeds, key: [seeds[s][key] for s in common]
        a = paired_interval(pick(row["seeds"], "a_test"), pick(plain, "a_test"))
        b = paired_interval(pick(plain, "b_test"), pick(row["seeds"], "b_test"))
        about = f"{label} at {row['setting']}, plain at {rows['plain']['setting']}, seeds {', '.join(map(str, common))}"
        found += [{"claim": f"{label} forgets less of A (tweet sentiment) than plain fine-tuning on B",
                   "verdict": verdict(a[1], a[2]),
                   "summary": f"A test accuracy {label} - plain, 95% interval: {format_interval(*a)} ({about})"},
                  {"claim": f"{label} learns B (WNUT-16 entity F1) less well than plain fine-tuning",
                   "verdict": verdict(b[1], b[2]),
                   "summary": f"B test entity F1 plain - {label}, 95% interval: {format_interval(*b)} ({about})"}]
    return found


def training_time(cache: str) -> str:
    """How many results the cache holds, what computing them took, from their ``seconds`` (records
    written before they kept it are counted apart), and on which processors (``runs.processors``):
    the same on every rerun from the same cache.

    Example::

        training_time("runs/cache")   # '60 results, computed in 101.2 min on AMD EPYC (x86_64: avx2, fma)'
    """
    records = cached_records(cache)
    seconds, machines = [r.get("seconds") for r in records], [r.get("machine") for r in records]
    unrecorded = sum(s is None for s in seconds)
    return (f"{len(seconds)} results, computed in {sum(s for s in seconds if s is not None) / 60:.1f} min"
            + (f" {processors(machines)}" if any(machines) else "")
            + (f" ({unrecorded} of them written before results recorded their time)" if unrecorded else ""))


def cached_records(cache: str) -> list[dict]:
    """Every result the cache holds (its JSON files but the selections), in a fixed order."""
    return [_load(os.path.join(folder, name)) for folder, _, files in sorted(os.walk(cache))
            for name in sorted(f for f in files if f.endswith(".json") and f != "selection.json")]


def cache_compute(cache: str) -> dict:
    """The sidecar's ``"compute"`` of the cache's results (``protocol.compute_summary``)."""
    records = cached_records(cache)
    return compute_summary([r.get("seconds") for r in records], [r.get("machine") for r in records])


def write_report(exp: Experiment) -> None:
    args, seeds = exp.args, exp.args.seeds
    rows, curves = method_rows(args.cache, seeds), wiseft_curves(args.cache, seeds)
    before = exp.cached("A/before", lambda: exp.a_scores(exp.a_params))
    lines = ["# Catastrophic forgetting: tweets (A) then WNUT-16 NER (B), all-MiniLM-L6-v2", "",
             f"Written by `{args.command}` ({cpu_description()}, {os.cpu_count()} cores, jax {jax.__version__}) "
             f"from the cached results in `{shown_path(args.cache)}` "
             f"({training_time(args.cache)}). Seeds {', '.join(map(str, seeds))} "
             "(`train.seed` of the B runs: head init, batch order, dropout); A trained once (seed 0).", "",
             f"A before B: test accuracy {before['a_test']:.4f} on {len(exp.a_setup.data.test)} tweets (the whole "
             f"test split{' of --quick' if args.quick else ''}). B: from A's export, {args.b_epochs:g} epochs for "
             "every method (equal step budgets); B's best-validation-F1 checkpoint. Hyperparameters chosen on "
             f"validation only (seed {SELECTION_SEED}; see the last table): plain's learning rate "
             f"({rows.get('plain', {}).get('setting', 'not run')}, by B validation F1) for every method but LoRA "
             f"(its own grid) and the LP stage ({args.lp_learning_rate:g}, 1 epoch); strengths by A validation "
             "accuracy + B validation F1; WiSE-FT's α by the same sum, averaged over seeds. Rehearsal's A accuracy "
             "is that of A's head trained beside B; every other method's is A's own head on the B encoder.", "",
             "## Methods (test, mean ± sample std over seeds)", ""]
    table = [[label, row["setting"], format_mean_std([r["a_test"] for r in row["seeds"].values()]),
              format_mean_std([r["b_test"] for r in row["seeds"].values()]), format_mean_std([r["drift"] for r in row["seeds"].values()]),
              ", ".join(map(str, sorted(row["seeds"])))] for label, row in rows.items()]
    lines += markdown_table(["method", "setting", "A accuracy", "B entity F1", "encoder drift", "seeds"], table)
    if "plain" in rows:
        lines += ["", "## Paired differences against plain (same seeds; mean and 95% t-interval)", ""]
        plain = rows["plain"]["seeds"]
        diffs = []
        for label, row in rows.items():
            common = sorted(set(row["seeds"]) & set(plain))
            if label == "plain" or not common:
                continue
            diffs.append([label, ", ".join(map(str, common)),
                          format_interval(*paired_interval([row["seeds"][s]["a_test"] for s in common],
                                                        [plain[s]["a_test"] for s in common])),
                          format_interval(*paired_interval([row["seeds"][s]["b_test"] for s in common],
                                                        [plain[s]["b_test"] for s in common]))])
        lines += markdown_table(["method", "seeds", "Δ A accuracy", "Δ B entity F1"], diffs)
    if curves:
        lines += ["", "## WiSE-FT: A's encoder interpolated with plain B's (validation, mean ± std over seeds; "
                  "test is read only at the chosen α, in the methods table)", ""]
        lines += markdown_table(["α", "A accuracy", "B F1, B's head", "B F1, re-fitted head"], [
            [f"{a:g}", *(format_mean_std([p[k] for p in c.values()]) for k in ("a_val", "own_b_val", "refit_b_val"))]
            for a, c in sorted(curves.items())])
    lines += ["", "## Selection on validation (seed 0)", ""]
    selections = []
    for name in sorted(os.listdir(args.cache)) if os.path.isdir(args.cache) else []:
        sel = _load(os.path.join(args.cache, name, "selection.json"))
        if sel:
            selections += [[name, label, f"{v:.4f}", sel["objective"], "yes" if label == sel["chosen"] else ""]
                           for label, v in sel["scores"].items()]
    lines += markdown_table(["method", "candidate", "validation objective", "objective", "chosen"], selections)
    png = os.path.splitext(args.out)[0] + ".png"
    pareto_plot(rows, curves, before["a_test"], png)
    lines += ["", f"![A accuracy against B entity F1]({os.path.basename(png)})"]
    found = claims(rows)
    if found:
        lines += ["", "## Claims", "", *(f"- {c['claim']}: **{c['verdict']}** ({c['summary']})." for c in found)]
        print(write_results(args.out, lines, title="Catastrophic forgetting: tweets then WNUT-16 NER (experiment 3)",
                            command=args.command, claims=found,
                            compute=cache_compute(args.cache)), end="")
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def pareto_plot(rows: dict, curves: dict, a_before: float, path: str) -> None:
    """Left: A accuracy against B entity F1 on test, one point per method (mean ± std error bars).
    Right (when WiSE-FT ran): its α curves on validation, per B head."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(14 if curves else 8, 6), squeeze=False)
    ax = axes[0][0]
    colors, markers = plt.get_cmap("tab20").colors, "os^DvP*Xh<>p"   # one look per method, up to 20
    for i, (label, row) in enumerate(rows.items()):
        (bx, bs), (ay, as_) = (mean_std([r[k] for r in row["seeds"].values()]) for k in ("b_test", "a_test"))
        ax.errorbar(bx, ay, xerr=np.nan_to_num(bs), yerr=np.nan_to_num(as_), fmt=markers[i % len(markers)],
                    color=colors[(2 * i) % 20 + (i // 10) % 2], capsize=3, label=label)
    ax.axhline(a_before, color="black", linewidth=0.8, label="A before B")
    ax.set(xlabel="B: WNUT-16 entity F1 (test)", ylabel="A: tweet accuracy (test)", title="methods (test)")
    ax.legend(fontsize=7, loc="best")
    if curves:
        ax = axes[0][1]
        for head, style in (("own", "o:"), ("refit", "s--")):
            xs = [np.mean([p[f"{head}_b_val"] for p in c.values()]) for _, c in sorted(curves.items())]
            ys = [np.mean([p["a_val"] for p in c.values()]) for _, c in sorted(curves.items())]
            ax.plot(xs, ys, style, label=f"{'B' if head == 'own' else 're-fitted'} head")
            for alpha, x, y in zip(sorted(curves), xs, ys):
                ax.annotate(f"{alpha:g}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
        ax.set(xlabel="B: WNUT-16 entity F1 (validation)", ylabel="A: tweet accuracy (validation)",
               title="WiSE-FT over α (validation, mean over seeds)")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exp = Experiment(args)
    lr = plain_lr(exp) if set(args.variants) - {"lora"} else None
    for name in args.variants:
        run_variant(exp, name, lr)
    write_report(exp)
    print(exp.cells.note("results"))


if __name__ == "__main__":
    main()
