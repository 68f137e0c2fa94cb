"""The CPU profile's op categories, on names and metadata as XLA:CPU writes them."""
from jaxtune.bench.op_categories import CATEGORIES, hlo_sources, jax_category

HLO = """
  %ynn_fusion.344 = f32[1024,1536]{1,0} fusion(%a, %b), kind=kCustom, calls=%fc.344, metadata={op_name="jit(step)/jvp(BertForSequenceClassification)/bert/encoder/layer_0/intermediate/dense/dot_general" stack_frame_id=128}
  ROOT %wrapped_broadcast.18 = f32[30522,384]{1,0} fusion(%c), kind=kLoop, metadata={op_name="jit(step)/transpose(jvp(BertForSequenceClassification))/bert/embeddings/word_embeddings/jit(_take)/broadcast_in_dim"}
  %copy.1237 = f32[384,384]{1,0} copy(%state_params)
"""


def test_hlo_sources_reads_op_names():
    sources = hlo_sources(HLO)
    assert sources["ynn_fusion.344"][0].endswith("layer_0/intermediate/dense/dot_general")
    assert sources["wrapped_broadcast.18"][0].startswith("jit(step)/transpose(")
    assert sources["copy.1237"][0] == ""


def test_categories_of_real_op_names():
    sources = hlo_sources(HLO)
    cases = {
        ("ynn_fusion.344", sources["ynn_fusion.344"][0]): "matmul, forward",
        ("ynn_fusion.1", "jit(step)/transpose(jvp(B))/bert/encoder/layer_1/output/dense/dot_general"): "matmul, gradients",
        ("wrapped_broadcast.18", sources["wrapped_broadcast.18"][0]): "embeddings (lookup and gradient)",
        ("broadcast_add_fusion.42", "jit(step)/jvp(B)/bert/encoder/layer_5/attention/self/jit(_bernoulli)/jit(_uniform)/add"):
            "dropout random bits",
        ("select_select_fusion.1", "jit(step)/jvp(B)/bert/encoder/layer_5/intermediate/erfc"): "GELU",
        ("multiply_add_fusion.302", "jit(step)/add"): "AdamW update",
        ("ynn_fusion.75", "jit(step)/reduce_sum"): "norms and finiteness checks",
        ("copy.1237", ""): "copies and transposes",
        ("fusion.9", "jit(step)/jvp(B)/bert/encoder/layer_0/attention/output/add"): "other",
    }
    for (name, source), expected in cases.items():
        assert jax_category(name, source) == expected, name
    assert set(cases.values()) <= set(CATEGORIES)
