"""LoRA adapters: a pytree of low-rank factors beside the params, applied by a pure function.

A :func:`jaxtune.lora` rule names the kernels that get factors. :func:`init_lora` makes the
adapters, a nested dict that mirrors the params' paths down to each LoRA'd kernel, holding a
:class:`LoraFactors` there (``A``: ``in x rank``, random; ``B``: ``rank x out``, zero, so the model
starts equal to the pretrained one). :func:`apply_lora` returns the params with every such kernel
replaced by ``W + alpha / rank * A @ B``; it is pure and differentiable, so it works in any loop.

For jaxtune's optimizer and step, put both in a :class:`LoraParams`: its leaves keep the paths the
rules are written for (``.../query/kernel`` and ``.../query/kernel/lora_a``), the rule table freezes
the kernels and trains the factors with the lora rule's settings. The train step runs the loss
function under :class:`jaxtune.LoraForward` (a linen model's LoRA'd Dense / 1x1 Conv calls computed
unmerged, so the frozen kernels' gradients are never formed); the eval step merges the factors
into the kernels (the loss function sees plain params either way).

Example::

    rules = [(r".*attention/self/(query|value)/kernel", jt.lora(rank=8, alpha=16)),
             (r"classifier/.*", jt.settings()), (r".*", jt.freeze())]
    adapters = jt.init_lora(params, rules, jax.random.key(0))
    tree = jt.LoraParams(params, adapters)
    tx = jt.make_optimizer(tree, rules, optax.adamw, 1e-3)
    state = jt.TrainState.create(tree, tx)
    step = jt.make_train_step(loss_fn, tx, trainable=jt.trainable_mask(tree, rules))
    ...
    plain = jt.merge_lora(state.params)     # plain params for export and inference
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.rules import LORA_TREE_KEYS, Rule, RuleError, leaf_paths, match_rules


@flax.struct.dataclass
class LoraFactors:
    """The factors of one kernel: ``lora_a`` (``[L,] in, rank``) and ``lora_b`` (``[L,] rank, out``);
    the kernel's update is ``scale * lora_a @ lora_b`` (per layer ``L`` of a stacked kernel),
    reshaped to the kernel's shape (a 1x1 convolution's ``(1, 1, in, out)``). ``scale`` is
    ``alpha / rank``; ``dropout`` is the rate of dropout on the LoRA branch's input in training
    (:class:`jaxtune.LoraForward`; PEFT's ``lora_dropout``).

    Example::

        f = LoraFactors(jnp.zeros((768, 8)), jnp.zeros((8, 768)), scale=2.0)
        f.rank   # 8
    """

    lora_a: Any
    lora_b: Any
    scale: float = flax.struct.field(pytree_node=False, default=1.0)
    dropout: float = flax.struct.field(pytree_node=False, default=0.0)

    @property
    def rank(self) -> int:
        """The rank: ``lora_a``'s last dimension."""
        return int(np.shape(self.lora_a)[-1])

    def delta(self, kernel_shape: Sequence[int]) -> jax.Array:
        """``scale * A @ B`` in float32, reshaped to ``kernel_shape``."""
        a, b = jnp.asarray(self.lora_a, jnp.float32), jnp.asarray(self.lora_b, jnp.float32)
        return (self.scale * jnp.matmul(a, b)).reshape(tuple(kernel_shape))


@jax.tree_util.register_pytree_with_keys_class
class LoraParams:
    """Params and their LoRA adapters as one pytree, the tree jaxtune trains.

    Its leaves have the paths of ``params`` and of ``adapters`` (``.../kernel/lora_a``): the two
    fields do not appear in path strings, so the rule table that made the adapters applies to it
    as it stands (:func:`jaxtune.make_optimizer`, :func:`jaxtune.trainable_mask`,
    :func:`jaxtune.summary`, L2-SP and weight averaging on the factors). The train and eval steps
    pass ``apply_lora(params, adapters)`` to the loss function.

    Example::

        tree = jt.LoraParams(params, jt.init_lora(params, rules, jax.random.key(0)))
        print(jt.summary(tree, rules))
    """

    def __init__(self, params: Any, adapters: Any):
        self.params = params
        self.adapters = adapters

    def __repr__(self) -> str:
        return f"LoraParams(params={self.params!r}, adapters={self.adapters!r})"

    def tree_flatten_with_keys(self):
        keys = [jax.tree_util.GetAttrKey(k) for k in LORA_TREE_KEYS]
        return list(zip(keys, (self.params, self.adapters))), None

    def tree_flatten(self):
        return (self.params, self.adapters), None

    @classmethod
    def tree_unflatten(cls, aux: Any, children: Sequence[Any]) -> "LoraParams":
        del aux
        return cls(*children)


def _is_factors(x: Any) -> bool:
    return isinstance(x, LoraFactors)


def factors_by_path(adapters: Any) -> dict[str, LoraFactors]:
    """``{kernel path: LoraFactors}`` of an adapters tree (nested mappings ending in LoraFactors).

    Example::

        factors_by_path({"q": {"kernel": f}})   # {"q/kernel": f}
    """
    flat: dict[str, LoraFactors] = {}

    def walk(node: Any, prefix: str) -> None:
        if _is_factors(node):
            flat[prefix] = node
        elif isinstance(node, Mapping):
            for key, child in node.items():
                walk(child, f"{prefix}/{key}" if prefix else str(key))
        else:
            raise RuleError(f"adapters entry {prefix or '(root)'} is a {type(node).__name__}; an adapters tree is "
                            "nested dicts ending in jt.LoraFactors, as jt.init_lora / jt.load_peft make it")
    walk(adapters, "")
    return flat


def _nest(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def check_factors(path: str, kernel_shape: Sequence[int], factors: LoraFactors, source: str = "adapters") -> None:
    """Raises :class:`RuleError` naming ``path`` unless ``factors`` fit a kernel of ``kernel_shape``.

    Example::

        check_factors("q/kernel", (768, 768), LoraFactors(jnp.zeros((768, 8)), jnp.zeros((8, 768))))
    """
    a, b, kernel_shape = tuple(np.shape(factors.lora_a)), tuple(np.shape(factors.lora_b)), tuple(kernel_shape)
    ok = (len(a) == len(b) >= 2 and a[:-2] == b[:-2] and a[-1] == b[-2] and len(kernel_shape) >= 2
          and kernel_shape[-2:] == (a[-2], b[-1]) and math.prod(a[:-1]) * b[-1] == math.prod(kernel_shape))
    if not ok:
        raise RuleError(f"{source}: the LoRA factors of {path} have shapes A {a}, B {b}, which do not fit the kernel "
                        f"of shape {kernel_shape} (A: [layers,] in x rank, B: [layers,] rank x out, in and out the "
                        "kernel's last two dimensions)")


def apply_lora(params: Any, adapters: Any) -> Any:
    """``params`` with each kernel that has factors replaced by ``W + scale * A @ B`` (added in
    float32, cast back to the kernel's dtype). Pure and differentiable (gradients reach the
    factors through the merged kernel); works on dicts, ``FrozenDict`` and ``nnx.State``. To train
    a linen model without forming the merged kernel's gradient, see :class:`jaxtune.LoraForward`.

    Example::

        logits = model.apply({"params": jt.apply_lora(params, adapters)}, batch["input_ids"])
    """
    flat, paths, leaves, treedef = flat_with_factors(params, adapters)
    out = [leaf if path not in flat else merge_kernel(path, leaf, flat[path]) for path, leaf in zip(paths, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def flat_with_factors(params: Any, adapters: Any) -> tuple[dict[str, LoraFactors], list[str], list[Any], Any]:
    """``(factors by kernel path, leaf paths, leaves, treedef)`` of ``params``; a :class:`RuleError`
    if an adapter names no parameter.

    Example::

        flat, paths, leaves, treedef = flat_with_factors(params, adapters)
    """
    flat = factors_by_path(adapters)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    paths = leaf_paths(params)
    unknown = sorted(set(flat) - set(paths))
    if unknown:
        raise RuleError(f"{len(unknown)} LoRA adapter(s) name no parameter: {unknown[:5]}; e.g. params have "
                        f"{paths[:3]}. Make the adapters from these params (jt.init_lora / jt.load_peft)")
    return flat, paths, leaves, treedef


def merge_kernel(path: str, kernel: Any, factors: LoraFactors, dtype: Any = None) -> jax.Array:
    """``kernel + scale * A @ B``, added in float32 and cast to ``dtype`` (default: the kernel's);
    a :class:`RuleError` names ``path`` if the factors do not fit the kernel.

    Example::

        merge_kernel("q/kernel", jnp.zeros((4, 4)), LoraFactors(jnp.ones((4, 2)), jnp.ones((2, 4))))   # all 2.0
    """
    check_factors(path, np.shape(kernel), factors)
    merged = jnp.asarray(kernel, jnp.float32) + factors.delta(np.shape(kernel))
    return merged.astype(jnp.result_type(kernel) if dtype is None else dtype)


def merged_params(tree: Any) -> Any:
    """``apply_lora(tree.params, tree.adapters)`` for a :class:`LoraParams`, else ``tree`` itself:
    what the train and eval steps give the loss function."""
    return apply_lora(tree.params, tree.adapters) if isinstance(tree, LoraParams) else tree


def merge_lora(tree: Any, adapters: Any = None) -> Any:
    """Plain params for export and inference: the factors merged into their kernels.

    Takes a :class:`LoraParams` (what a LoRA run's ``state.params`` holds), or ``params`` and
    ``adapters``. Jitted, so a large model merges in one compiled call.

    Example::

        params = jt.merge_lora(state.params)
        jt.save_pretrained({"params": params}, model.config, "out/", task="sequence_classification")
    """
    if adapters is None:
        if not isinstance(tree, LoraParams):
            raise TypeError(f"merge_lora takes a jt.LoraParams, or params and adapters; got a {type(tree).__name__} "
                            "alone")
        tree, adapters = tree.params, tree.adapters
    return jax.jit(apply_lora)(tree, adapters)


def _kernel_dims(path: str, shape: tuple[int, ...], stacked: bool) -> tuple[tuple[int, ...], int, int]:
    """(leading layer dims, in, out) of a kernel LoRA can adapt: a Dense ``(in, out)``, a 1x1
    convolution ``(1, 1, in, out)``, each with a leading layer axis when stacked."""
    lead, core = (shape[:1], shape[1:]) if stacked else ((), shape)
    if len(core) < 2 or any(d != 1 for d in core[:-2]):
        raise RuleError(f"a jt.lora rule matches {path} of shape {shape}, which is not a Dense kernel (in, out) or "
                        f"a 1x1 convolution (1, 1, in, out){' per layer' if stacked else ''}; narrow the rule's "
                        "regex to such kernels (e.g. '.*/(query|value)/kernel')")
    return lead, core[-2], core[-1]


def init_lora(params: Any, rules: Sequence[Rule], rng: jax.Array, *,
              layer_ids: Callable[[str], Any] | None = None) -> dict:
    """The adapters of the kernels that :func:`jaxtune.lora` rules match (first match wins, as in
    the whole table; other rules are ignored here): ``A`` uniform in ``+-1/sqrt(in)`` (PEFT's
    default), ``B`` zero, float32. A stacked kernel (``layer_ids(path)`` gives one id per entry of
    its leading axis) gets factors per layer.

    Example::

        adapters = jt.init_lora(params, rules, jax.random.key(0))
        adapters["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"].lora_a.shape   # (384, 8)
    """
    if isinstance(params, LoraParams):
        raise RuleError("init_lora takes the plain params; this tree already holds adapters (jt.LoraParams)")
    found = match_rules(params, rules, allow_uncovered=True, allow_unused=True)
    leaves, paths = jax.tree_util.tree_leaves(params), leaf_paths(params)
    flat = {}
    for n, (i, path, leaf) in enumerate(zip(found, paths, leaves)):
        spec = None if i is None else rules[i][1].lora
        if spec is None:
            continue
        stacked = layer_ids is not None and np.ndim(layer_ids(path)) == 1
        lead, d_in, d_out = _kernel_dims(path, tuple(np.shape(leaf)), stacked)
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(jax.random.fold_in(rng, n), lead + (d_in, spec.rank), jnp.float32, -bound, bound)
        flat[path] = LoraFactors(a, jnp.zeros(lead + (spec.rank, d_out), jnp.float32), scale=spec.scale,
                                 dropout=spec.dropout)
    if not flat:
        with_lora = [r for r, s in rules if s.lora is not None]
        raise RuleError(f"no parameter gets LoRA factors: " + (
            f"the jt.lora rule(s) {with_lora} match no kernel (or an earlier rule takes them)" if with_lora
            else "the rule table has no jt.lora rule"),
            hint=f"Parameter paths look like {paths[:3]}; e.g. (r'.*/(query|value)/kernel', jt.lora(rank=8)).")
    return _nest(flat)


def lora_parameter_count(adapters: Any) -> int:
    """Number of trainable numbers in an adapters tree (both factors of every kernel).

    Example::

        jt.lora_parameter_count(adapters)   # 73,728 = 6 layers x (query, value) x (384 + 384) x 8: MiniLM, r=8
    """
    return sum(int(np.size(f.lora_a)) + int(np.size(f.lora_b)) for f in factors_by_path(adapters).values())
