"""PyTorch peers of the jaxtune step-throughput cases (loaded by :mod:`jaxtune.bench.peers`).

A peer is the transformers PyTorch model of the same family, config and shapes as the jaxtune case
(``BertForSequenceClassification``, ``T5ForConditionalGeneration``, ``ResNetForImageClassification``
built from the same config; the CPU suite loads the same checkpoint files), trained with
``torch.optim.AdamW`` at the same learning rate and weight decay, in train mode (dropout on).

On CUDA: bf16 autocast with fp32 master weights (as jaxtune's bf16 compute), the fused AdamW
kernel, TF32 for the remaining fp32 matmuls/convolutions, cuDNN autotuning, channels_last images,
and ``torch.compile`` for the ``"compile"`` variant. On CPU: fp32, the foreach AdamW and as many
intra-op threads as XLA uses (the cores of the process's affinity mask).

Example::

    peers = importlib.import_module("torch_peers")
    device, reason = peers.peer_device("gpu")
    peers.configure(device)
    peer = peers.TorchPeer(case, jax_config, host_batch, "eager", device)
    static = peer.setup(); seconds = peer.run(5)
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

LEARNING_RATE = 2e-5
WEIGHT_DECAY = 0.01


def peer_device(jax_backend: str) -> tuple[str | None, str]:
    """The torch device that matches JAX's backend, or (None, why peers are skipped).

    Example::

        >>> peer_device("cpu")
        ('cpu', '')
    """
    if jax_backend == "gpu":
        if torch.cuda.is_available():
            return "cuda", ""
        return None, f"PyTorch {torch.__version__} has no CUDA device (install a CUDA build of torch)"
    if jax_backend == "cpu":
        return "cpu", ""
    return None, f"no PyTorch peer for the JAX backend {jax_backend!r}"


def configure(device: str) -> None:
    """Process-wide PyTorch settings of the peers (threads on CPU; TF32 and cuDNN autotuning on CUDA)."""
    if device == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def build_hf_model(case: Any, jax_config: Any) -> torch.nn.Module:
    """The transformers model of a case, with the jaxtune config's hyper-parameters (random init),
    or loaded from ``case.pretrained``."""
    if case.family == "bert":
        if case.pretrained is not None:
            return transformers.BertForSequenceClassification.from_pretrained(
                case.pretrained, num_labels=case.num_labels, attn_implementation="sdpa")
        from jaxtune.models.bert import config_to_hf
        hf = config_to_hf(jax_config, "sequence_classification", case.num_labels)
        return transformers.BertForSequenceClassification(
            transformers.BertConfig.from_dict(hf, attn_implementation="sdpa"))
    if case.family == "t5":
        from jaxtune.models.t5 import config_to_hf
        hf = config_to_hf(jax_config, "text_to_text")
        return transformers.T5ForConditionalGeneration(transformers.T5Config.from_dict(hf))
    if case.family == "resnet":
        from jaxtune.models.resnet import config_to_hf
        hf = config_to_hf(jax_config, "image_classification", case.num_labels)
        return transformers.ResNetForImageClassification(transformers.ResNetConfig.from_dict(hf))
    raise ValueError(f"case {case.name}: no PyTorch peer for family {case.family!r}")


def torch_inputs(case: Any, batch: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    """Keyword inputs (with ``labels``) of the transformers model for a jaxtune host batch."""
    if case.family == "resnet":
        images = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2)      # NHWC -> NCHW view
        memory_format = torch.channels_last if device != "cpu" else torch.contiguous_format
        return {"pixel_values": images.to(device).contiguous(memory_format=memory_format),
                "labels": torch.from_numpy(batch["labels"]).long().to(device)}
    return {k: torch.from_numpy(v).long().to(device) for k, v in batch.items()}


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def _compiled_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


class TorchPeer:
    """One PyTorch variant (``"eager"`` or ``"compile"``) of a case, with the harness's contestant
    interface: ``setup() -> dict``, ``run(steps) -> seconds``, ``compilations()``, ``close()``."""

    framework = "pytorch"
    mode = "full"

    def __init__(self, case: Any, jax_config: Any, batch: dict[str, np.ndarray], variant: str, device: str):
        if variant not in ("eager", "compile"):
            raise ValueError(f"unknown PyTorch variant {variant!r}; use 'eager' or 'compile'")
        self.case, self.jax_config, self.host_batch = case, jax_config, batch
        self.variant, self.device = variant, device
        self.amp = device != "cpu"
        self.dtype_name = "bfloat16 autocast" if self.amp else "float32"
        self.graphs_at_start = 0

    def _forward_backward(self) -> None:
        with torch.autocast(device_type="cuda" if self.amp else "cpu", dtype=torch.bfloat16, enabled=self.amp):
            loss = self.model(**self.inputs).loss
        loss.backward()

    def _step(self) -> None:
        self._forward_backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def setup(self) -> dict:
        """Builds the model and optimizer, counts FLOPs of one step, runs (and for ``compile``
        compiles, timed) the first step; returns the static stats."""
        torch.manual_seed(0)
        cuda = self.device != "cpu"
        base = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model = build_hf_model(self.case, self.jax_config).to(self.device).train()
        if self.case.family == "resnet" and cuda:
            model = model.to(memory_format=torch.channels_last)
        n_params = sum(p.numel() for p in model.parameters())
        self.inputs = torch_inputs(self.case, self.host_batch, self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                                           **({"fused": True} if cuda else {}))
        self.model = model
        with FlopCounterMode(display=False) as counter:
            self._forward_backward()
        self.optimizer.zero_grad(set_to_none=True)
        flops = float(counter.get_total_flops()) or None
        if self.variant == "compile":
            self.graphs_at_start = _compiled_graphs()
            self.model = torch.compile(model, dynamic=False)   # static shapes per case, as XLA compiles them
        _sync(self.device)
        start = time.perf_counter()
        self._step()
        _sync(self.device)
        first_step_s = time.perf_counter() - start
        state_bytes = sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                          for t in s.values() if torch.is_tensor(t))
        return {"compile_s": first_step_s if self.variant == "compile" else None,
                "flops_per_step": flops, "flops_source": "torch_flop_counter" if flops else "n/a",
                "xla_bytes_accessed": None,
                "peak_memory_bytes": torch.cuda.max_memory_allocated() - base if cuda else None,
                "memory_source": "torch.cuda.max_memory_allocated" if cuda else "n/a",
                "optimizer_state_bytes": int(state_bytes), "param_count": int(n_params),
                "trainable_param_count": int(n_params),
                # transformers' attention backend ("sdpa", "eager", ...); None for ResNet
                "attention_kernel": getattr(model.config, "_attn_implementation", None)
                if self.case.family in ("bert", "t5") else None}

    def run(self, steps: int) -> float:
        """Runs ``steps`` steps, synchronises the device once at the end, returns the seconds."""
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        _sync(self.device)
        return time.perf_counter() - start

    def compilations(self) -> int:
        """Graphs torch.compile built for this peer so far (0 in eager mode)."""
        return _compiled_graphs() - self.graphs_at_start if self.variant == "compile" else 0

    def close(self) -> None:
        self.model = self.optimizer = self.inputs = None
        if self.device != "cpu":
            torch.cuda.empty_cache()
