"""Step-throughput benchmarks: jaxtune fine-tuning steps against their PyTorch peers.

One process, one run: for every *case* (a model at fixed shapes) the harness builds a jaxtune train
step per *mode* and, where PyTorch is available, the PyTorch peers of the same model, shapes and
optimizer (AdamW), then times them in interleaved rounds (every contestant runs a round in turn, so
a noisy shared machine slows them alike).

Modes (all with AdamW, lr 2e-5, weight decay 0.01):

* ``full``: full fine-tuning with plain ``optax.adamw``;
* ``frozen_backbone``: structural mode, head only: ``make_train_step(trainable=mask)`` with a rule
  table that freezes everything but the head (no backward into the backbone, no optimizer state);
* ``llrd_masks``: the family's ``default_rules()`` (weight-decay masks) with layer-wise LR decay 0.9
  through ``model.layer_ids``;
* ``runtime_unfreeze``: gradual unfreezing in runtime mode (``make_optimizer(runtime=True)``): the
  stage switches with :func:`jaxtune.set_trainable` at the start of every timed round; the number
  of extra compilations is recorded (it must be 0).

Every record reports examples/s, the median step time, achieved TFLOP/s and MFU against a matmul
peak measured on the same device (bf16 on GPU, f32 on CPU), FLOPs per step (XLA cost analysis of
the compiled step, else an analytic 6·N·tokens estimate), compile time, peak memory, optimizer-state
bytes and the number of compilations. Outputs: JSON lines, a markdown table, a PNG bar chart and a
section of ``benchmarks/RESULTS.md``.

Suites: ``gpu`` (the default; BERT-base, T5-small, ResNet-50 at the issue's shapes), ``cpu`` (the
real all-MiniLM-L6-v2 against PyTorch CPU) and ``smoke`` (tiny configs, seconds).

Modules (the library proper never imports this package; ``jaxtune bench`` loads it on use):

* :mod:`~jaxtune.bench.cases`: modes, suites, cases and their random batches;
* :mod:`~jaxtune.bench.measure`: step times, matmul peak, XLA FLOPs/memory, compilation counter;
* :mod:`~jaxtune.bench.contestants`: the jaxtune step of each mode, compiled ahead of time;
* :mod:`~jaxtune.bench.members`: the ``members`` / ``sequential`` contestants;
* :mod:`~jaxtune.bench.peers`: loads the PyTorch peers (``benchmarks/torch_peers.py``);
* :mod:`~jaxtune.bench.harness`: timing protocol, time budget, :func:`run_case`;
* :mod:`~jaxtune.bench.report`: tables, targets, chart, JSON lines, RESULTS.md;
* :mod:`~jaxtune.bench.xla_flags`: a suite's XLA flags and environment;
* :mod:`~jaxtune.bench.cli`: ``jaxtune bench`` (:func:`main`);
* :mod:`~jaxtune.bench.aot`: compile every gpu-suite step for a described GPU, no device needed.

Example::

    python benchmarks/step_throughput.py --smoke --out /tmp/bench
    python -m jaxtune.bench --cpu          # or: jaxtune bench --cpu
"""
from jaxtune.bench.cases import (
    ALL_MODES,
    LAYER_DECAY,
    LEARNING_RATE,
    MEMBER_MODES,
    MODES,
    SMOKE_MODES,
    SUITES,
    UNFREEZING_STAGES,
    WEIGHT_DECAY,
    Case,
    make_batch,
    suite_cases,
    with_attention,
    with_members,
)
from jaxtune.bench.cli import main, parse_args
from jaxtune.bench.contestants import JaxContestant, Model, build_model, compile_contestants, run_steps
from jaxtune.bench.harness import (
    CONCURRENT_COMPILE_COST,
    EAGER_PEER_COST,
    FAILURE_TRACEBACK_FRAMES,
    MIN_BUDGET_SCALE,
    PROFILE_TOP_OPS,
    SUITE_OPTIONS,
    TORCH_COMPILE_COST,
    Options,
    TimeBudget,
    choose_attention,
    cudnn_attention_preflight,
    environment,
    estimate_case_s,
    jax_contestant,
    run_case,
    run_cases,
)
from jaxtune.bench.measure import (
    BACKEND_COMPILE_EVENT,
    CUDNN_ATTENTION_TARGET,
    analytic_flops,
    attention_kernel,
    matmul_peak_flops,
    median_call_seconds,
    median_step_time,
    tree_bytes,
    xla_compile_count,
    xla_cost,
    xla_peak_bytes,
)
from jaxtune.bench.members import MemberContestant, member_targets
from jaxtune.bench.peers import load_torch_peers
from jaxtune.bench.report import (
    append_case_outputs,
    check_targets,
    environment_markdown,
    find_record,
    markdown_table,
    mib,
    plot,
    record_line,
    section_body,
    start_outputs,
    write_rows_and_table,
    targets_table,
    update_results_md,
    write_outputs,
)
from jaxtune.bench.xla_flags import (
    CPU_PROFILE_XLA_FLAGS,
    GPU_ENV,
    GPU_XLA_FLAGS,
    SMOKE_XLA_FLAGS,
    XLA_FLAG_PROBE,
    accepted_xla_flags,
    apply_environment,
)
