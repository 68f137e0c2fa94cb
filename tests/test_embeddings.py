"""Word-vector readers, vocabulary alignment and the embedding-bag classifier (jaxtune.embeddings, models.bag)."""
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune.embeddings import (
    VectorFileError,
    build_vocabulary,
    detect_vector_format,
    embedding_table,
    load_glove,
    load_vectors,
    load_word2vec,
    simple_tokenize,
    vocabulary_words,
)
from jaxtune.models import bag

WORDS = ["the", "Apple", "über", "a.b", "x"]


def _vectors(n=5, dim=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _write_text(path, words, vectors, header=True):
    lines = [f"{len(words)} {vectors.shape[1]}"] if header else []
    lines += [w + " " + " ".join(repr(float(v)) for v in row) for w, row in zip(words, vectors)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_binary(path, words, vectors, newline=True):
    """The original C tool's layout: header, then word, space, float32 LE bytes, newline."""
    out = f"{len(words)} {vectors.shape[1]}\n".encode()
    for w, row in zip(words, vectors):
        out += w.encode() + b" " + struct.pack(f"<{len(row)}f", *row) + (b"\n" if newline else b"")
    path.write_bytes(out)
    return path


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["word2vec", "word2vec_binary", "word2vec_binary_no_newline", "glove"])
def test_each_format_reads_exact_float32(tmp_path, fmt):
    vecs = _vectors()
    if fmt == "word2vec":
        path = _write_text(tmp_path / "v.txt", WORDS, vecs)
        loaded = load_word2vec(path)
    elif fmt == "glove":
        path = _write_text(tmp_path / "v.txt", WORDS, vecs, header=False)
        loaded = load_glove(path)
    else:
        path = _write_binary(tmp_path / "v.bin", WORDS, vecs, newline=fmt == "word2vec_binary")
        loaded = load_word2vec(path, binary=True)
    assert loaded.words == tuple(WORDS)
    assert loaded.vectors.dtype == np.float32 and loaded.vectors.shape == (5, 3)
    np.testing.assert_array_equal(loaded.vectors, vecs)  # exact: repr() round-trips float32
    assert detect_vector_format(path) == ("word2vec_binary" if "binary" in fmt else fmt)
    assert load_vectors(path).format == loaded.format


def test_keep_and_limit_read_only_some_rows(tmp_path):
    vecs = _vectors()
    path = _write_binary(tmp_path / "v.bin", WORDS, vecs)
    # keep adds the lower-cased forms of the vocabulary's words, not other casings: "Apple" stays out.
    kept = load_vectors(path, keep=["apple", "x", "absent"])
    assert kept.words == ("x",) and kept.rows_read == 5
    kept = load_vectors(path, keep=["Apple", "x"])
    assert kept.words == ("Apple", "x")
    np.testing.assert_array_equal(kept["x"], vecs[4])
    first = load_vectors(_write_text(tmp_path / "g.txt", WORDS, vecs, header=False), limit=2)
    assert first.words == ("the", "Apple") and first.rows_read == 2


def test_duplicate_words_keep_the_first_vector(tmp_path):
    vecs = _vectors(3)
    loaded = load_glove(_write_text(tmp_path / "g.txt", ["a", "b", "a"], vecs, header=False))
    assert loaded.words == ("a", "b") and loaded.duplicates == 1
    np.testing.assert_array_equal(loaded["a"], vecs[0])


@pytest.mark.parametrize("fmt", ["word2vec", "word2vec_binary", "glove"])
def test_matches_gensim_reader_exactly(tmp_path, fmt):
    KeyedVectors = pytest.importorskip("gensim.models").KeyedVectors
    kv = KeyedVectors(vector_size=7)
    kv.add_vectors(WORDS + ["über-long_word", "#tag"], _vectors(7, 7, seed=1))
    path = tmp_path / "v"
    kv.save_word2vec_format(str(path), binary=fmt == "word2vec_binary", write_header=fmt != "glove")
    ours = load_vectors(path)
    theirs = KeyedVectors.load_word2vec_format(str(path), binary=fmt == "word2vec_binary", no_header=fmt == "glove")
    assert ours.format == fmt
    assert list(ours.words) == theirs.index_to_key
    np.testing.assert_array_equal(ours.vectors, theirs.vectors)  # float32, bit-exact
    # And gensim reads the C tool's binary layout (newline after each vector) as we do.
    c_path = _write_binary(tmp_path / "c.bin", WORDS, _vectors(dim=7))
    c_theirs = KeyedVectors.load_word2vec_format(str(c_path), binary=True)
    assert list(load_vectors(c_path).words) == c_theirs.index_to_key
    np.testing.assert_array_equal(load_vectors(c_path).vectors, c_theirs.vectors)


# ---------------------------------------------------------------------------------------------
# Malformed files
# ---------------------------------------------------------------------------------------------


def test_wrong_dimension_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("3 3\na 1 2 3\nb 1 2\nc 1 2 3\n")
    with pytest.raises(VectorFileError, match=r"bad\.txt, line 3: word 'b' has 2 values, expected 3 "
                                              r"\(the header's dimension\)"):
        load_word2vec(path)
    glove = tmp_path / "bad_glove.txt"
    glove.write_text("a 1 2\nb 1 2\nc 1 2 3\n")
    with pytest.raises(VectorFileError, match=r"bad_glove\.txt, line 3: word 'c' has 3 values, expected 2 "
                                              r"\(the dimension of the first row\)"):
        load_glove(glove)


def test_non_numeric_value_and_bad_header(tmp_path):
    path = tmp_path / "nan.txt"
    path.write_text("2 2\na 1 2\nb 1 two\n")
    with pytest.raises(VectorFileError, match=r"nan\.txt, line 3: word 'b' has a value that is not a number"):
        load_word2vec(path)
    header = tmp_path / "header.txt"
    header.write_text("a 1 2\n")
    with pytest.raises(VectorFileError, match=r"header\.txt, line 1: expected a Word2Vec header '<count> <dim>'.*"
                                              r"GloVe format"):
        load_word2vec(header)


def test_header_count_mismatch(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("3 2\na 1 2\nb 1 2\n")
    with pytest.raises(VectorFileError, match=r"short\.txt: the header announces 3 vectors but the file ends after 2"):
        load_word2vec(short)
    long = tmp_path / "long.txt"
    long.write_text("1 2\na 1 2\nb 1 2\n")
    with pytest.raises(VectorFileError, match=r"long\.txt, line 3: the header announces 1 vectors but the file "
                                              r"has more rows"):
        load_word2vec(long)


def test_truncated_binary_names_record_and_byte(tmp_path):
    path = _write_binary(tmp_path / "cut.bin", WORDS[:2], _vectors(2))
    data = path.read_bytes()
    path.write_bytes(data[:-6])  # drop the newline and 5 of the last vector's 12 bytes
    with pytest.raises(VectorFileError, match=r"cut\.bin, binary record 2 of 2 \(byte 21\): the file ends with "
                                              r"7 of the 12 vector bytes of b'Apple'"):
        load_word2vec(path, binary=True)


def test_binary_word_errors(tmp_path):
    path = tmp_path / "latin.bin"
    path.write_bytes(b"1 1\n\xfcber " + struct.pack("<f", 1.5))
    with pytest.raises(VectorFileError, match=r"latin\.bin, binary record 1 \(byte 4\): word b'\\xfcber' is not "
                                              r"valid utf-8.*errors='ignore'"):
        load_word2vec(path, binary=True)
    assert load_word2vec(path, binary=True, errors="ignore").words == ("ber",)
    text = _write_text(tmp_path / "text.txt", WORDS, _vectors())
    with pytest.raises(VectorFileError, match=r"text\.txt, binary record \d+ of 5 .*format='word2vec'"):
        load_word2vec(text, binary=True)


def test_undecodable_word(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"1 2\n\xfcber 1 2\n")
    with pytest.raises(VectorFileError, match=r"latin\.txt, line 2: bytes 0\.\.1 are not valid utf-8"):
        load_word2vec(path)
    assert load_word2vec(path, encoding="latin-1").words == ("über",)


# ---------------------------------------------------------------------------------------------
# Vocabulary and embedding table
# ---------------------------------------------------------------------------------------------


def test_tokenizer_and_vocabulary_builder():
    assert simple_tokenize("@United Delayed AGAIN... don't #fail") == [
        "@united", "delayed", "again", ".", ".", ".", "don't", "#fail"]
    vocab = build_vocabulary(["b a c", "a b a", "d"], min_count=1, max_size=4)
    assert vocab.words == ("<pad>", "<unk>", "a", "b") and vocab.counts == (0, 0, 3, 2)
    assert (vocab.pad_id, vocab.unk_id) == (0, 1)
    np.testing.assert_array_equal(vocab.encode(["a zzz b a", ""], max_length=3), [[2, 1, 3], [0, 0, 0]])
    assert build_vocabulary(["b a c", "a b a"], min_count=2).words == ("<pad>", "<unk>", "a", "b")
    with pytest.raises(ValueError, match="max_size must leave room"):
        build_vocabulary(["a"], max_size=2)


def test_coverage_counts_on_a_hand_made_vocabulary(tmp_path):
    vecs = _vectors()
    vectors = load_glove(_write_text(tmp_path / "g.txt", ["the", "apple", "über", "x", "y"], vecs, header=False))
    vocab = ["<pad>", "the", "Apple", "ÜBER", "zebra", "x", "Y"]
    table, report = embedding_table(vectors, vocab, padding_index=0)
    # exact: the, x; lower-cased: Apple->apple, ÜBER->über, Y->y; not found: zebra; padding: <pad>.
    assert (report.exact, report.lowercased, report.not_found, report.found) == (2, 3, 1, 5)
    assert report.missing == ("zebra",) and report.padding_index == 0 and report.token_coverage is None
    assert table.dtype == np.float32 and table.shape == (7, 3)
    np.testing.assert_array_equal(table[0], 0.0)
    np.testing.assert_array_equal(table[[1, 2, 3, 5, 6]], vecs[[0, 1, 2, 3, 4]])
    assert "5 of 7 words found" in str(report) and "(2 exact, 3 lower-cased), 1 not found" in str(report)
    _, exact_only = embedding_table(vectors, vocab, lowercase=False, padding_index=None)
    assert (exact_only.exact, exact_only.lowercased, exact_only.not_found) == (2, 0, 5)


def test_vocabulary_object_gives_padding_and_token_coverage(tmp_path):
    vectors = load_glove(_write_text(tmp_path / "g.txt", ["a", "b"], _vectors(2), header=False))
    vocab = build_vocabulary(["a a a b c"])  # counts a 3, b 1, c 1
    table, report = embedding_table(vectors, vocab)
    assert report.padding_index == 0 and report.not_found == 2  # <unk> and c
    assert report.token_coverage == pytest.approx(4 / 5, abs=1e-12)
    np.testing.assert_array_equal(table[vocab.pad_id], 0.0)


def test_hf_word_level_tokenizer_vocabulary(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    words = {"[PAD]": 0, "[UNK]": 1, "the": 2, "apple": 3}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="[UNK]"))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")
    assert vocabulary_words(tok) == ["[PAD]", "[UNK]", "the", "apple"]
    vectors = load_glove(_write_text(tmp_path / "g.txt", ["apple", "the"], _vectors(2), header=False))
    table, report = embedding_table(vectors, tok, init="zeros")
    assert report.padding_index == 0 and (report.exact, report.not_found) == (2, 1)
    np.testing.assert_array_equal(table[3], vectors["apple"])
    with pytest.raises(ValueError, match=r"needs the ids 0\.\.1, each once; missing \[1\]"):
        vocabulary_words({"a": 0, "b": 2})


def test_unknown_word_rule_statistics_and_seed(tmp_path):
    rng = np.random.default_rng(0)
    mean, std = np.array([3.0, -1.0, 0.0, 5.0]), np.array([2.0, 0.5, 1.0, 0.1])
    found = (rng.standard_normal((400, 4)) * std + mean).astype(np.float32)
    known = [f"w{i}" for i in range(400)]
    vectors = load_glove(_write_text(tmp_path / "g.txt", known, found, header=False))
    vocab = ["<pad>"] + known + [f"new{i}" for i in range(4000)]
    table, report = embedding_table(vectors, vocab, init="normal", seed=7, padding_index=0)
    new = table[401:].astype(np.float64)
    ref_mean, ref_std = found.mean(0, dtype=np.float64), found.std(0, dtype=np.float64)
    # 4000 draws: the sample mean is within 4 standard errors, the sample std within 5%.
    np.testing.assert_array_less(np.abs(new.mean(0) - ref_mean), 4 * ref_std / np.sqrt(4000))
    np.testing.assert_allclose(new.std(0), ref_std, rtol=0.05)
    assert "normal with the per-dimension mean/std of the found vectors, seed 7" == report.init
    again, _ = embedding_table(vectors, vocab, init="normal", seed=7, padding_index=0)
    other, _ = embedding_table(vectors, vocab, init="normal", seed=8, padding_index=0)
    np.testing.assert_array_equal(again, table)
    assert not np.array_equal(other[401:], table[401:])
    np.testing.assert_array_equal(other[:401], table[:401])  # found rows and padding do not depend on the seed
    uniform, rep = embedding_table(vectors, vocab, init="uniform", seed=0, padding_index=0)
    a = float(np.sqrt(3) * found.std(dtype=np.float64))
    assert np.abs(uniform[401:]).max() <= a and rep.init.startswith(f"uniform(-{a:.4g}, {a:.4g})")
    zeros, _ = embedding_table(vectors, vocab, init="zeros", padding_index=0)
    np.testing.assert_array_equal(zeros[401:], 0.0)


def test_no_word_found_is_a_clear_error(tmp_path):
    vectors = load_glove(_write_text(tmp_path / "g.txt", ["a", "b"], _vectors(2), header=False))
    with pytest.raises(ValueError, match=r"only 0 vocabulary word\(s\) have one.*init='zeros'"):
        embedding_table(vectors, ["<pad>", "c", "d"])
    with pytest.raises(ValueError, match="unknown init rule 'gauss'"):
        embedding_table(vectors, ["a", "b"], init="gauss")


# ---------------------------------------------------------------------------------------------
# Classifier and rule tables
# ---------------------------------------------------------------------------------------------


def _tiny(encoder_layers=0):
    config = bag.BagConfig(vocab_size=20, embed_dim=8, num_labels=3, hidden_size=16, encoder_layers=encoder_layers,
                           num_heads=2, max_length=6, dropout=0.0)
    model = bag.BagClassifier(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 20, (8, 6)), jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    table = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    return model, bag.with_embedding_table(params, table), {"ids": ids, "y": jnp.arange(8, dtype=jnp.int32) % 3}


def _loss(model):
    def loss(params, batch, *, rng, model_state):
        logits = model.apply({"params": params}, batch["ids"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), ({}, model_state)
    return loss


def _train(step, state, batch, n=3):
    for _ in range(n):
        state, _ = step(state, batch)
    return state


def test_layer_ids_and_default_rules_cover_the_model():
    model, params, _ = _tiny(encoder_layers=1)
    ids = {p: model.layer_ids(p) for p in jt.leaf_paths(params)}
    assert ids["embeddings/embedding"] == 0 and ids["position_embeddings/embedding"] == 0
    assert ids["encoder/layer_0/query/kernel"] == 1 and ids["hidden/kernel"] == 2 and ids["head/bias"] == 3
    jt.match_rules(params, bag.default_rules())  # raises on uncovered paths or unused rules
    assert jt.label_params(params, bag.default_rules())["encoder"]["layer_0"]["output_norm"]["scale"] == "no_decay"
    with pytest.raises(KeyError, match="unknown parameter path 'pooler/kernel'"):
        bag.layer_ids("pooler/kernel", 1)
    with pytest.raises(KeyError, match="encoder layer 3 .* outside 0..0"):
        bag.layer_ids("encoder/layer_3/query/kernel", 2)
    with pytest.raises(ValueError, match=r"embedding table has shape \(5, 8\)"):
        bag.with_embedding_table(params, np.zeros((5, 8)))


def test_encoder_variant_ignores_padding():
    model, params, batch = _tiny(encoder_layers=1)
    ids = batch["ids"].at[:, 4:].set(0).at[0].set(0)  # padding (id 0) at the end; row 0 all padding
    logits = model.apply({"params": params}, ids)
    assert logits.dtype == jnp.float32 and logits.shape == (8, 3) and bool(jnp.isfinite(logits).all())
    changed = model.apply({"params": params}, ids.at[1:, 4:].set(0))  # padding values do not matter
    np.testing.assert_allclose(np.asarray(changed), np.asarray(logits), rtol=0, atol=0)
    moved = model.apply({"params": params}, ids.at[1:, 3].set(5))  # a real word does
    assert np.abs(np.asarray(moved[1:]) - np.asarray(logits[1:])).max() > 1e-6


def test_frozen_vectors_stay_bit_identical_and_trainable_ones_move():
    model, params, batch = _tiny()
    table = np.asarray(params["embeddings"]["embedding"]).copy()
    frozen = [(r"embeddings/.*", jt.freeze("word_vectors")), *bag.default_rules()]
    tx = jt.make_optimizer(params, frozen, optax.adam, 1e-2)
    step = jt.make_train_step(_loss(model), tx, trainable=jt.trainable_mask(params, frozen), donate=False)
    state = _train(step, jt.TrainState.create(params, tx), batch)
    np.testing.assert_array_equal(np.asarray(state.params["embeddings"]["embedding"]), table)  # bitwise
    assert not np.array_equal(np.asarray(state.params["hidden"]["kernel"]), np.asarray(params["hidden"]["kernel"]))

    tx = jt.make_optimizer(params, bag.default_rules(), optax.adam, 1e-2)
    state = _train(jt.make_train_step(_loss(model), tx, donate=False), jt.TrainState.create(params, tx), batch)
    assert np.abs(np.asarray(state.params["embeddings"]["embedding"]) - table).max() > 1e-3


def test_unfreeze_vectors_after_k_steps_in_runtime_mode():
    model, params, batch = _tiny()
    table = np.asarray(params["embeddings"]["embedding"]).copy()
    stages = jt.unfreezing_stages(params, model.layer_ids, num_stages=2)
    assert stages[0]["embeddings"]["embedding"] is False and stages[0]["hidden"]["kernel"] is True
    tx = jt.make_optimizer(params, bag.default_rules(), optax.adam, 1e-2, runtime=True)
    step = jt.make_train_step(_loss(model), tx, donate=False)
    state = jt.TrainState.create(params, tx)
    state = state.replace(opt_state=jt.set_trainable(state.opt_state, stages[0]))
    state = _train(step, state, batch)
    np.testing.assert_array_equal(np.asarray(state.params["embeddings"]["embedding"]), table)
    state = state.replace(opt_state=jt.set_trainable(state.opt_state, stages[1]))
    state = _train(step, state, batch)
    assert np.abs(np.asarray(state.params["embeddings"]["embedding"]) - table).max() > 1e-3
    assert step._cache_size() == 1  # the unfreezing did not recompile
