"""The layout's import rules (README "Layout"): no cycles, dependencies pointing one way, small files.

Imports are read from the source (module level and deferred, inside functions alike), so a rule cannot be
dodged by importing late.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ovseg_jax", "data_pipelines", "configs")
# What each part of the library may not import (entry points -> methods -> (train, eval) -> (models, ops,
# weights) -> data_pipelines).
FORBIDDEN = {
    "data_pipelines": ("ovseg_jax",),
    "ovseg_jax.models": ("ovseg_jax.weights", "ovseg_jax.train", "ovseg_jax.eval", "ovseg_jax.methods",
                         "ovseg_jax.ops"),
    "ovseg_jax.ops": ("ovseg_jax.weights", "ovseg_jax.train", "ovseg_jax.eval", "ovseg_jax.methods"),
    "ovseg_jax.weights": ("ovseg_jax.train", "ovseg_jax.eval", "ovseg_jax.methods", "ovseg_jax.ops"),
    "ovseg_jax.train": ("ovseg_jax.eval", "ovseg_jax.methods"),
    "ovseg_jax.eval": ("ovseg_jax.methods",),
}
MAX_LINES = 400


def _module_name(path: Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
  return {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
  """Project modules `path` imports; `from package import module` counts as importing the module itself."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    else:
      continue
    for target in targets:
      while target and target not in known:
        target = target.rpartition(".")[0]
      if target and target != name:
        found.add(target)
  return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan, iterative)."""
  index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
  for root in graph:
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = counter[0]
    counter[0] += 1
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = counter[0]
          counter[0] += 1
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, ())))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1:
          out.append(sorted(component))
  return out


def test_no_import_cycles(graph):
  assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_dependencies_point_one_way(graph):
  broken = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  for part, banned in FORBIDDEN.items()
                  if (module == part or module.startswith(part + ".")) and target.startswith(banned))
  assert broken == []


def test_no_source_file_is_over_the_line_limit():
  long = sorted(f"{path.relative_to(REPO)} ({n})" for path in _modules().values()
                if (n := len(path.read_text().splitlines())) > MAX_LINES)
  assert long == []
