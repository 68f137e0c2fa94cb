"""What a finished run leaves behind: curves, the test report, the export and ``result.json``.

The runner (:func:`jaxtune.finetune`, :func:`jaxtune.finetune_members`) calls :func:`write_outputs`
once training and testing are done; only process 0 of a multi-process run writes files.

Example::

    result = write_outputs(setup, plan, state, result, predictions, references, start)
    result.paths["report"]      # RUN_DIR/report.txt
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxtune import metrics as M
from jaxtune import multihost
from jaxtune.errors import UserError
from jaxtune.lora import LoraParams, merged_params
from jaxtune.run_data import _model_dir
from jaxtune.run_rehearsal import without_old_head
from jaxtune.rundir import RunDirPlan, RunResult, read_result, write_result
from jaxtune.runlog import plot_classification_report, plot_curves
from jaxtune.tasks import Task
from jaxtune.train import TrainState

if TYPE_CHECKING:
    from jaxtune.experiment import Setup


def export_config(config: Any, task: Task) -> Any:
    """``config`` with the task's ``problem_type`` (e.g. ``"regression"``) where the config has that field,
    so the exported ``config.json`` tells transformers which loss the head was trained with."""
    if task.problem_type is None or not hasattr(config, "problem_type"):
        return config
    return dataclasses.replace(config, problem_type=task.problem_type)


def _finish(plan: RunDirPlan, result: RunResult) -> RunResult:
    """Writes ``result.json`` (atomically, last of all files): from now on the run counts as finished.
    Process 0 writes it; the others return what it wrote (the same result, with every path)."""
    result.paths["result"] = os.path.join(plan.run_dir, "result.json")
    if multihost.is_main_process():
        write_result(plan.run_dir, plan.fingerprint, result)
    multihost.barrier("result_written")
    return result if multihost.is_main_process() else read_result(plan.run_dir)


def write_outputs(setup: Setup, plan: RunDirPlan, state: TrainState, result: RunResult, predictions: np.ndarray,
                  references: np.ndarray, start: float) -> RunResult:
    """A trained run's files beside its logs: curves, test report (and class report plot), the HF export
    of ``state`` (the evaluated weights) if asked, then ``result.json`` (last). ``result.paths`` holds
    ``checkpoints`` and ``metrics`` already; ``result.seconds`` is set from ``start``. Every process
    takes part in fetching sharded weights; only process 0 writes files.

    Example::

        return write_outputs(setup, plan, state, result, predictions, references, start)
    """
    cfg, run_dir = setup.config, setup.run_dir
    test_scores, best_step, step = result.test_metrics, result.best_step, result.steps
    paths = {"run_dir": run_dir, **result.paths, "tensorboard": os.path.join(run_dir, "tensorboard"),
             "config": os.path.join(run_dir, "config.yaml")}
    exported = (multihost.host_copy({"params": without_old_head(state.params), **state.model_state})
                if cfg.checkpoint.export_best_hf else None)
    if multihost.is_main_process():
        paths.update(_write_run_files(setup, paths["metrics"], f"run {cfg.name}: best step {best_step} of {step}",
                                      test_scores, predictions, references, exported))
    print(f"{cfg.name}: test " + ", ".join(f"{k} {v:.4f}" for k, v in test_scores.items()) + f" (best step {best_step})")
    result.paths, result.seconds = paths, time.time() - start
    return _finish(plan, result)


def _write_run_files(setup: Setup, jsonl_path: str, headline: str, test_scores: dict[str, float],
                     predictions: np.ndarray, references: np.ndarray, exported: dict | None) -> dict[str, str]:
    """Writes the curve plot, the test report (and its plot) and, given the weights ``exported``, the
    HF export into the run directory; returns their paths."""
    from jaxtune.models.family import export_labels

    cfg, data, task, run_dir = setup.config, setup.data, setup.task, setup.run_dir
    paths = {"plot": plot_curves(jsonl_path, os.path.join(run_dir, "curves.png"), title=cfg.name)}
    report_lines = [headline, data.description, "", setup.strategy_table, "",
                    "test: " + ", ".join(f"{k} {v:.4f}" for k, v in test_scores.items())]
    if task.name in ("sequence_classification", "pair_classification", "image_classification"):
        class_report = M.classification_report(references, predictions, data.label_names)
        report_lines += ["", str(class_report)]
        paths["class_report_plot"] = plot_classification_report(
            class_report, os.path.join(run_dir, "test_report.png"), title=f"{cfg.name}: test")
    paths["report"] = os.path.join(run_dir, "report.txt")
    with open(paths["report"], "w", encoding="utf-8") as f:
        f.write("\n".join(report_lines) + "\n")
    if exported is not None:
        paths["export"] = os.path.join(run_dir, "best_hf")
        paths.update(export_model(exported, export_config(setup.model.config, task), paths["export"], task.head,
                                  cfg.checkpoint.export_format,
                                  labels=export_labels(data.label_names, cfg.model.num_labels, task.head)))
        if data.buckets is not None:  # a text model: its tokenizer goes along, so the export is a model dir
            from jaxtune.data.text import load_tokenizer
            load_tokenizer(_model_dir(cfg.model.path)).save_pretrained(paths["export"])
    return paths


def export_model(variables: dict, config: Any, directory: str, task: str | None, export_format: str = "merged",
                 **save_kwargs) -> dict:
    """Writes the model ``variables`` (``{"params": ..., **model_state}``, on the host) as an HF checkpoint
    in ``directory`` (:func:`jaxtune.save_pretrained` with ``save_kwargs``). A LoRA model
    (``variables["params"]`` a :class:`jaxtune.LoraParams`) is written
    with its factors merged into the kernels (``"merged"``), or unmerged with a PEFT adapter in
    ``directory/adapter`` (``"peft"``:
    ``peft.PeftModel.from_pretrained(AutoModel...from_pretrained(directory), directory + "/adapter")``).
    Returns the paths written beyond ``directory`` (``{"adapter": ...}``).

    Example::

        export_model({"params": state.params, **state.model_state}, model.config, "runs/lora/best_hf",
                     "sequence_classification", "peft")
    """
    from jaxtune.hub import save_pretrained

    trained = variables["params"]
    lora = isinstance(trained, LoraParams)
    params = trained.params if lora and export_format == "peft" else merged_params(trained)
    save_pretrained({**variables, "params": jax.device_get(params)}, config, directory, task=task, **save_kwargs)
    if export_format != "peft":
        return {}
    if not lora:
        raise UserError("checkpoint.export_format is 'peft' but the model has no LoRA adapters; export 'merged'")
    from jaxtune.lora_peft import save_peft

    adapter = os.path.join(directory, "adapter")
    save_peft(jax.device_get(trained.adapters), config, adapter, task=task, params=jax.device_get(params),
              base_model_name_or_path=os.path.abspath(directory))
    return {"adapter": adapter}
