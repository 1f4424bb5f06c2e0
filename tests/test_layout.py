"""The library room reads top-down: no import cycle among bihm_triton's modules (imports inside functions count),
and the Gibbs updates of every engine fall back to the layer engine with the stream where it was."""

from __future__ import annotations

import ast
import os

import pytest
import torch

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bihm_triton")


def _modules() -> dict:
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                name = "bihm_triton" + ("" if rel == "__init__" else "." + rel.removesuffix(".__init__"))
                out[name] = os.path.join(folder, f)
    return out


def _imports(name: str, path: str, modules: dict) -> set:
    """Every bihm_triton module that ``name`` imports, anywhere in its file (``from . import x`` of a submodule
    counts as that submodule)."""
    is_pkg = path.endswith("__init__.py")
    parts = name.split(".")
    deps = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                for cand in (f"{mod}.{alias.name}", mod):
                    if cand in modules:
                        deps.add(cand)
                        break
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in modules}
    deps.discard(name)
    # a module imports its package's __init__ on the way: only the direct edges are kept here
    return deps


def test_no_import_cycle_in_the_package():
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}  # parent packages
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert "bihm_triton.engines.gibbs" in graph and "bihm_triton.samplers" in graph


def test_the_checker_finds_a_cycle(tmp_path):
    """The check itself can fail: two modules importing each other inside functions."""
    (tmp_path / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "b.py").write_text("def g():\n    from .a import f\n")
    modules = {"bihm_triton.a": str(tmp_path / "a.py"), "bihm_triton.b": str(tmp_path / "b.py")}
    assert _imports("bihm_triton.a", modules["bihm_triton.a"], modules) == {"bihm_triton.b"}
    assert _imports("bihm_triton.b", modules["bihm_triton.b"], modules) == {"bihm_triton.a"}


def test_a_gibbs_kernel_that_fails_to_compile_falls_back_with_the_stream_in_place(monkeypatch):
    """The fused hidden update takes its four draws, then its kernel fails to compile: the layer engine runs the
    update from the same stream position, so the chains are the reference's."""
    import bihm_triton.engines.triton as triton_engine
    import bihm_triton.kernels.gibbs as gibbs_kernels
    from bihm_triton.model import BiHM
    from helpers import DEVICE, dyadic

    class CompilationError(Exception):
        pass

    def broken(*args, **kwargs):
        raise CompilationError("no such instruction")

    torch.manual_seed(2)
    ref = BiHM([12, 6, 4], backend="reference")
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(dyadic(torch.randn_like(p)))
    fast = BiHM(ref.sizes, backend="triton", device=DEVICE)
    fast.load_state_dict(ref.state_dict())
    monkeypatch.setattr(gibbs_kernels, "gibbs_hidden_update", broken)
    monkeypatch.setattr(triton_engine, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="fused gibbs kernels failed to compile"):
        got = fast.gibbs_sample(7, 2, k=2, seed=5, progress=False)
    want = ref.gibbs_sample(7, 2, k=2, seed=5, progress=False)
    assert "gibbs" in fast.engine.failed
    assert torch.equal(got.x.cpu(), want.x)
