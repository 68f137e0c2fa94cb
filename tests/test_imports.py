"""``import jaxtune`` and the benchmark harness must work on an image without the data-pipeline
packages (the GPU machines that run ``benchmarks/gpu_session.sh`` have no grain,
tensorflow-datasets or tensorboardX and cannot install them); ``import jaxtune`` does not load the
benchmark harness (``jaxtune.bench``)."""
import subprocess
import sys

import pytest

OPTIONAL = ("grain", "array_record", "tensorflow_datasets", "tensorboardX", "gensim")


def test_import_without_data_pipeline_packages():
    code = "\n".join([
        "import sys",
        *(f"sys.modules[{name!r}] = None" for name in OPTIONAL),   # makes `import name` raise ImportError
        "import jaxtune",
        "assert not [m for m in sys.modules if m.startswith('jaxtune.bench')], 'import jaxtune loaded the bench'",
        "import jaxtune.bench, jaxtune.cli",
        "print(sorted(n for n in " + repr(OPTIONAL) + " if sys.modules.get(n) is not None))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_grain_names_resolve_on_first_use():
    import jaxtune.data as data
    from jaxtune.data.loader import Loader
    from jaxtune.data.rehearsal import RehearsalSchedule

    assert data.Loader is Loader
    assert data.RehearsalSchedule is RehearsalSchedule
    with pytest.raises(AttributeError, match="NotAThing"):
        data.NotAThing


# What each module split by job (issue #17, "a layout to live in") defined or re-exported before the
# split, and the private helpers other modules take from it: all stay importable from the old place.
NAMES_BEFORE_THE_SPLIT = {
    "jaxtune.data.text": "DEFAULT_PAD_VALUES IGNORE_INDEX QAFeatures Tokenized align_labels batch_shapes bucket_batches "
                         "bucket_for decode_qa_predictions length_buckets load_tokenizer pad_batch prepare_qa_features "
                         "tokenize_text_to_text tokenize_texts tokenize_words word_predictions",
    "jaxtune.metrics": "ClassificationReport EntityScores ImbalancedDataWarning LabelBalance accuracy bleu chrf "
                       "classification_report confusion_matrix entity_f1 get_entities label_balance macro_f1 "
                       "matthews_corrcoef mean_squared_error normalize_answer pearson spearman squad_exact_match squad_f1",
    "jaxtune.models.t5": "FAMILY NAMES TASKS T5Attention T5Block T5Config T5DenseActDense T5LayerCrossAttention T5LayerFF "
                         "T5LayerNorm T5LayerSelfAttention T5Model T5Stack build config_for_weights config_to_hf "
                         "default_rules example_inputs layer_ids relative_position_bucket shift_right t5_loss to_flax to_hf",
    "jaxtune.hub": "CONFIG_NAME FAMILY_MODULES LoadReport MINILM_PACKAGE PICKLE_INDEX_NAME PICKLE_NAME PICKLE_SUFFIXES "
                   "RENAMED_MODEL_TYPES SAFETENSORS_INDEX_NAME SAFETENSORS_NAME family_for from_pretrained load_variables "
                   "minilm_path random_variables read_config read_weights resolve_directory save_pretrained "
                   "_family_of_config _listing _read_json _read_safetensors _to_numpy",
    "jaxtune.rules": "BATCH_STATS_MODES LORA_FACTORS LORA_TREE_KEYS LoraSpec Rule RuleError Settings freeze "
                     "frozen_batch_norm group_name l2_sp_strength label_params layer_factors leaf_paths leaf_settings lora "
                     "lora_base_path match_rules param_paths settings strip_variables summary trainable_mask "
                     "tree_structure validate_settings weight_decay_mask _layer_id _resolve",
    "jaxtune.config": "CheckpointConfig ConfigError DataConfig EXPORT_FORMATS EarlyStoppingConfig ExperimentConfig "
                      "FLOAT_DTYPES LENGTH_KEYS LoraConfig MODEL_INITS ModelConfig OptimConfig PARALLEL RESUMABLE_KEYS "
                      "RuleConfig SCHEDULES TRUNCATIONS TrainConfig UNFREEZING WEIGHT_AVERAGES apply_overrides from_dict "
                      "load_config resumable_keys save_config to_dict unfreeze_boundaries unfreeze_stage_count "
                      "validate_config",
    "jaxtune.experiment": "PreparedData Setup build build_rules check_monitor epoch_batches evaluate evaluate_run "
                          "evaluation_state export_config export_model finetune load_model prepare_data read_result "
                          "run_fingerprint strategy_table with_adapters with_frozen_bn write_outputs _as_config _dataset "
                          "_optimizer _schedule _stack_rows _uses_layer_decay _weight_averaging",
}


@pytest.mark.parametrize("module", sorted(NAMES_BEFORE_THE_SPLIT))
def test_split_modules_keep_their_names(module):
    import importlib

    imported = importlib.import_module(module)
    missing = [name for name in NAMES_BEFORE_THE_SPLIT[module].split() if not hasattr(imported, name)]
    assert not missing, f"{module} lost {missing} in the split; import them back from their new module"
