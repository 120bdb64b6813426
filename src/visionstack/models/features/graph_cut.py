"""Cut a zoo classifier into the backbone body and its native head path with torch.fx.

The model is traced once per mode (train / eval) with its discovered *units* -- the modules the level
rule works with (ResNet: ``conv1`` ... ``layer4``) -- as fx leaf modules, so inside them everything runs
eagerly: forward hooks on ``layer4`` or ``layer4[-1]`` (Grad-CAM, summaries) fire as in the original, and
the per-call cost is the original's. Only the model's own top-level code is replaced by generated code.

* :func:`body_module`: image -> ``{key: level output}``, computing nothing after the deepest level.
* :func:`split_native`: the level's output -> the final classifier's input (the native encoder), and the
  final classifier (the last module with parameters before the output; a Linear, or a graph around a conv
  for SqueezeNet).

Both are torchvision ``DualGraphModule`` s (train and eval graphs) made by :func:`dual_graph`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import fx, nn

from visionstack.models.features.layout import Level

__all__ = ["NativeSplit", "Traced", "body_module", "dual_graph", "level_node", "split_native", "trace_model"]

#: mode (training?) -> (graph, node -> module-path name as torchvision's NodePathTracer gives it)
Traced = dict[bool, tuple[fx.Graph, dict[fx.Node, str]]]


@functools.cache
def _tracer_class() -> type:
    from torchvision.models import feature_extraction as fe  # torchvision loads only when used

    class UnitTracer(fe.NodePathTracer):
        """torchvision's NodePathTracer that also keeps the named ``leaves`` whole."""

        def __init__(self, leaves: Iterable[str]) -> None:
            super().__init__(**fe._set_default_tracer_kwargs(None))
            self.leaves = frozenset(leaves)

        def is_leaf_module(self, m: nn.Module, module_qualname: str) -> bool:
            return module_qualname in self.leaves or super().is_leaf_module(m, module_qualname)

        def _get_node_qualname(self, module_qualname: str, node: fx.Node) -> str:
            # a module call keeps its exact path: torchvision would rename a first call of
            # ``encoder_layer_0`` to ``encoder_layer`` (it strips fx's ``_<n>`` suffixes)
            if node.op == "call_module" and module_qualname not in self.node_to_qualname.values():
                return module_qualname
            return super()._get_node_qualname(module_qualname, node)

    return UnitTracer


def trace_model(model: nn.Module, leaves: Iterable[str] = ()) -> Traced:
    """Trace ``model`` in train and in eval mode, keeping ``leaves`` (module paths) as single calls."""
    leaves = tuple(leaves)
    was_training = model.training
    traced: Traced = {}
    try:
        for training in (True, False):
            model.train(training)
            tracer = _tracer_class()(leaves)
            graph = tracer.trace(model)
            traced[training] = (graph, dict(tracer.node_to_qualname))
    finally:
        model.train(was_training)
    return traced


@functools.cache
def _dual_graph_class() -> type:
    from torchvision.models.feature_extraction import DualGraphModule

    class ModeKeepingDualGraph(DualGraphModule):
        def __deepcopy__(self, memo):
            copied = super().__deepcopy__(memo)
            copied.train(self.training)
            for mine, theirs in zip(self.modules(), copied.modules()):
                theirs.training = mine.training
            return copied

    return ModeKeepingDualGraph


def dual_graph(root: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph, name: str) -> fx.GraphModule:
    """torchvision's ``DualGraphModule`` (train / eval graphs switched by ``train()``) that keeps its modes
    through ``copy.deepcopy`` (torchvision's copy comes back in train mode, which breaks EMA / eval copies)."""
    module = _dual_graph_class()(root, train_graph, eval_graph, class_name=name)
    module.train(root.training)
    return module


def level_node(graph: fx.Graph, qualnames: Mapping[fx.Node, str], name: str) -> fx.Node:
    """The node whose value is module ``name``'s output: its last node, as ``create_feature_extractor``."""
    depth = name.count(".")
    for node in reversed(list(graph.nodes)):
        qualname = qualnames.get(node)
        if qualname is not None and ".".join(qualname.split(".")[: depth + 1]) == name:
            return node
    raise ValueError(f"module {name!r} does not appear in the traced graph")


def _ancestors(end: fx.Node, stop: fx.Node | None = None) -> set[fx.Node]:
    """Nodes ``end`` depends on (itself included), not looking past ``stop``."""
    seen: set[fx.Node] = set()
    stack = [end]
    while stack:
        node = stack.pop()
        if node is stop or node in seen:
            continue
        seen.add(node)
        stack.extend(node.all_input_nodes)
    return seen


def _copy(graph: fx.Graph, needed: set[fx.Node], env: dict[fx.Node, fx.Node], into: fx.Graph) -> None:
    for node in graph.nodes:
        if node in needed and node not in env:
            env[node] = into.node_copy(node, lambda n: env[n])


def body_module(model: nn.Module, traced: Traced, nodes: Mapping[str, str], name: str) -> fx.GraphModule:
    """Image -> ``{key: output of module}`` for ``nodes`` (module path -> key); stops after the last one."""
    graphs = {}
    for training, (graph, qualnames) in traced.items():
        outs = {key: level_node(graph, qualnames, path) for path, key in nodes.items()}
        needed = set().union(*(_ancestors(n) for n in outs.values()))
        sub, env = fx.Graph(), {}
        _copy(graph, needed, env, sub)
        sub.output({key: env[n] for key, n in outs.items()})
        graphs[training] = sub
    return dual_graph(model, graphs[True], graphs[False], name)


def _subgraph(graph: fx.Graph, start: fx.Node, end: fx.Node) -> fx.Graph:
    """A new graph computing ``end`` from ``start`` (its one input); fails if ``end`` needs the image."""
    needed = _ancestors(end, stop=start)
    if any(n.op == "placeholder" for n in needed):
        raise ValueError(f"{end.name!r} depends on the input other than through {start.name!r}")
    sub = fx.Graph()
    env = {start: sub.placeholder("x")}
    _copy(graph, needed, env, sub)
    sub.output(env[end])
    return sub


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _final_layer(graph: fx.Graph, model: nn.Module) -> fx.Node:
    """The last module with parameters on the way to the output: the final classifier."""
    used = _ancestors(next(n for n in graph.nodes if n.op == "output"))
    for node in reversed(list(graph.nodes)):
        if (
            node in used
            and node.op == "call_module"
            and _has_parameters(model.get_submodule(str(node.target)))
        ):
            return node
    raise ValueError(f"{type(model).__name__} has no layer with parameters before its output")


@dataclass
class NativeSplit:
    """What follows a model's last level: the encoder graph and the final classifier."""

    level: Level
    encoder: nn.Module  # the level's raw output -> the classifier's input
    final_name: str  # the final classifier's module path in the original model
    final: nn.Module  # the original final classifier (weights as loaded)
    head: nn.Module | None  # classifier input -> logits, when the classifier is more than one Linear


def split_native(model: nn.Module, traced: Traced, level: Level) -> NativeSplit:
    """Cut the traced ``model`` after ``level`` into its native encoder and final classifier."""
    graphs: dict[bool, tuple[fx.Graph, fx.Graph]] = {}
    final_name = result_name = ""
    single = True
    for training in (False, True):  # eval first: its output is the logits alone (no auxiliary heads)
        graph, qualnames = traced[training]
        start = level_node(graph, qualnames, level.name)
        if not training:
            final = _final_layer(graph, model)
            final_name = str(final.target)
            result = next(n for n in graph.nodes if n.op == "output").args[0]
            if not isinstance(result, fx.Node):
                raise ValueError(f"{type(model).__name__} does not return one tensor in eval mode")
            result_name = qualnames.get(result, "")
        else:
            final = next(n for n in graph.nodes if n.op == "call_module" and n.target == final_name)
            result = next(n for n in graph.nodes if qualnames.get(n) == result_name)
        order = {n: i for i, n in enumerate(graph.nodes)}
        if order[final] <= order[start]:
            raise ValueError(f"the final classifier {final_name!r} runs before level {level.name!r}")
        if not final.args or not isinstance(final.args[0], fx.Node):
            raise ValueError(f"cannot read the input of the final classifier {final_name!r}")
        single = single and result is final
        graphs[training] = (_subgraph(graph, start, final.args[0]), _subgraph(graph, final.args[0], result))
    final_module = model.get_submodule(final_name)
    encoder = dual_graph(model, graphs[True][0], graphs[False][0], "NativeTail")
    head = None
    if not (single and isinstance(final_module, nn.Linear)):
        head = dual_graph(model, graphs[True][1], graphs[False][1], "NativeClassifier")
    return NativeSplit(level, encoder, final_name, final_module, head)
