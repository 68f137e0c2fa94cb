"""jaxtune: fine-tune pretrained networks in JAX.

The public API is flat, like optax::

    import jaxtune as jt
    rules = [(r"embeddings/.*", jt.freeze()), (r".*bias", jt.settings(weight_decay=False)), (r".*", jt.settings())]
    tx = jt.make_optimizer(params, rules, learning_rate=1e-4, layer_ids=model.layer_ids, layer_decay=0.9)
"""
from jaxtune.checkpoint import BrokenCheckpointError, CheckpointWriteError, Checkpointer
from jaxtune.compile_cache import FirstCallWatch, use_compilation_cache, use_run_compile_settings
from jaxtune.config import (
    RESUMABLE_KEYS,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    EarlyStoppingConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    RehearsalConfig,
    RuleConfig,
    TrainConfig,
    load_config,
    resumable_keys,
    save_config,
    validate_config,
)
from jaxtune.data.checks import DataError
from jaxtune.early_stopping import EarlyStopping
from jaxtune.embeddings import (
    CoverageReport,
    VectorFileError,
    Vocabulary,
    WordVectors,
    build_vocabulary,
    embedding_table,
    load_glove,
    load_vectors,
    load_word2vec,
)
from jaxtune.errors import UserError
from jaxtune.forgetting import (
    AnchorDecayState,
    L2SPState,
    RuntimeAnchorDecayState,
    RuntimeL2SPState,
    anchor_decay,
    WeightAverageState,
    average_weights,
    averaged_params,
    interpolate_params,
    l2_sp,
    param_drift,
)
from jaxtune.generation import generate
from jaxtune.experiment import build_rules, evaluate_run, finetune
from jaxtune.hub import LoadReport, from_pretrained, minilm_path, save_pretrained
from jaxtune.lora import LoraFactors, LoraParams, apply_lora, init_lora, lora_parameter_count, merge_lora
from jaxtune.lora_forward import LoraForward
from jaxtune.lora_peft import load_peft, save_peft
from jaxtune.member_runs import MembersUnsupported, finetune_members
from jaxtune.members import make_member_eval_step, make_member_step, num_members, stack_members, unstack_members
from jaxtune.multihost import MultihostError, initialize_multihost, is_main_process, process_label
from jaxtune.nonfinite import NonFiniteError, NonFiniteGuard, nonfinite_leaf
from jaxtune.profiling import OpTimes, profile_step
from jaxtune.optim import (
    MultiplierState,
    WeightDecayState,
    lr_multipliers,
    make_optimizer,
    scale_by_multipliers,
    set_l2_sp,
    set_lr_multipliers,
    set_trainable,
    set_weight_decay,
    warmup_cosine,
    warmup_linear,
)
from jaxtune.rules import (
    LoraSpec,
    RuleError,
    Settings,
    freeze,
    frozen_batch_norm,
    label_params,
    layer_factors,
    leaf_paths,
    lora,
    match_rules,
    param_paths,
    settings,
    summary,
    trainable_mask,
    validate_settings,
    weight_decay_mask,
)
from jaxtune.rundir import RunDirError, RunResult, read_result, run_fingerprint
from jaxtune.run_data import PreparedData, prepare_data
from jaxtune.runlog import RunLogger, plot_curves, progress_bar, read_jsonl
from jaxtune.seeds import epoch_seed, seed_stream
from jaxtune.sharding import (
    batch_sharding,
    fsdp_gather,
    fsdp_spec,
    make_mesh,
    place_global_batch,
    process_rows,
    shard_batch,
    shard_train_state,
    tree_shardings,
)
from jaxtune.stage_fresh import RuleOptimizerState, StageFreshState
from jaxtune.sweep import SweepResult, sweep
from jaxtune.torch_checkpoint import CheckpointFormatError, UnsafeCheckpointError, load_torch_state_dict
from jaxtune.torch_writer import save_torch_state_dict
from jaxtune.train import (
    StagedTrainStep,
    TrainState,
    cast_floating,
    compile_count,
    default_compute_dtype,
    make_eval_step,
    make_train_step,
    mask_key,
    train_step_fn,
)
from jaxtune.unfreezing import (
    freeze_below,
    frozen_bottom_layers,
    unfreezing_stage,
    unfreezing_stages,
    with_frozen_layers,
)
from jaxtune.xla_options import step_compiler_options, use_gpu_threefry_kernel
from jaxtune.models.bert import BertConfig, mean_pool
from jaxtune.models.t5 import T5Config, shift_right, t5_loss
from jaxtune.models.resnet import ResNetConfig, resnet_config
from jaxtune.data.image import IMAGENET_MEAN, IMAGENET_STD
from jaxtune.models._cnn import normalize_images
from jaxtune.models.batch_norm import batch_statistics, recompute_batch_stats
from jaxtune.models.fast_conv import conv_implementation
from jaxtune.models.embed import Embed, embedding_lookup
from jaxtune.models.mobilenet import mobilenet_v2_imagenet
from jaxtune.models.efficientnet import efficientnet_lite0_imagenet

__version__ = "0.1.0"
