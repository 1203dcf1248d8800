"""The shape of the package, checked from its source: floors, cycles, sizes, method names, docs.

jaxdiff is built in floors (README, "Architecture"); a module may import its own
floor or lower ones, never a higher one, and no import cycle exists. The generic
code (trainer, samplers, checkpoints, config) never names a method: a method
plugs in through the objective contract. Files stay under 400 lines and
functions under 60 (network definitions excepted). Code comments cite the
project's own docs/ pages, whose anchors must exist.
"""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxdiff")

# Longest prefix wins. Floor 0 is the leaf; 6 the command line.
FLOORS = {
    "jaxdiff.errors": 0,
    "jaxdiff.console": 1, "jaxdiff.failures": 1, "jaxdiff.liveness": 1, "jaxdiff.weights": 1, "jaxdiff.resize": 1, "jaxdiff.parallel": 1,
    "jaxdiff.visualize": 1, "jaxdiff.diffusion": 1, "jaxdiff.augment": 1, "jaxdiff.sampling": 1,
    "jaxdiff.curriculum": 1, "jaxdiff.curriculum.clusters": 1, "jaxdiff.curriculum.pacing": 1,
    "jaxdiff.curriculum.analysis": 1, "jaxdiff.curriculum.study_plots": 1, "jaxdiff.curriculum.snr_clusters": 1, "jaxdiff.data.builtin": 1, "jaxdiff.data.catalog": 1,
    "jaxdiff.evaluation.frechet": 1, "jaxdiff.evaluation.toy": 1,
    "jaxdiff.models": 2, "jaxdiff.data": 2, "jaxdiff.optim": 2, "jaxdiff.checkpoint": 2, "jaxdiff.lock": 2,
    "jaxdiff.evaluation": 2, "jaxdiff.curriculum.runtime": 2, "jaxdiff.curriculum.study": 2,
    "jaxdiff.objectives.lpips": 2,
    "jaxdiff.objectives.": 3,
    "jaxdiff.objectives": 4, "jaxdiff.config": 4,
    "jaxdiff.train": 5, "jaxdiff.workdir": 5,
    "jaxdiff.commands": 6, "jaxdiff.main": 6, "jaxdiff.prepare_data": 6,
    "jaxdiff.supervisor": 6, "jaxdiff.convert": 6,
    # A weights reader the latent data path uses (data/latents.py), below the commands.
    "jaxdiff.convert.autoencoder_kl": 2,
}
GENERIC = ("jaxdiff.train", "jaxdiff.sampling", "jaxdiff.checkpoint", "jaxdiff.config",
           "jaxdiff.workdir", "jaxdiff.curriculum.runtime")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_files() -> dict[str, str]:
  out = {}
  for dirpath, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


MODULES = module_files()
TREES = {name: ast.parse(open(path).read(), path) for name, path in MODULES.items()}


def floor(module: str) -> int:
  best = max((p for p in FLOORS if module == p or (p.endswith(".") and module.startswith(p))
              or module.startswith(p + ".")), key=len, default=None)
  assert best is not None, f"{module} has no floor: add it to FLOORS (and README's picture)"
  return FLOORS[best]


def imports_of(module: str) -> set[str]:
  """Every jaxdiff module `module` imports, at the top or inside a function."""
  package = module if MODULES[module].endswith("__init__.py") else module.rsplit(".", 1)[0]
  out = set()
  for node in ast.walk(TREES[module]):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("jaxdiff"))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                        ([base] if base else []))
      if not base.startswith("jaxdiff"):
        continue
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in MODULES else base)
  return out - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_import_goes_to_the_same_or_a_lower_floor():
  upward = [f"{m} (floor {floor(m)}) imports {d} (floor {floor(d)})"
            for m, deps in GRAPH.items() for d in deps if floor(d) > floor(m)]
  assert not upward, "\n".join(upward)


def test_no_import_cycles():
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in GRAPH[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in GRAPH:
    if v not in index:
      visit(v)
  assert not cycles, cycles


def test_generic_code_names_no_method():
  from jaxdiff import objectives
  methods = set(objectives.names())
  found = []
  for m, tree in TREES.items():
    if not m.startswith(GENERIC):
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and node.value in methods:
        found.append(f"{m}:{node.lineno} {node.value!r}")
  assert not found, found


def _is_network(cls: ast.ClassDef) -> bool:
  return any(ast.unparse(b) in ("nn.Module", "flax.linen.Module") for b in cls.bases)


def test_files_and_functions_are_small():
  long_files = [f"{m}: {len(open(p).readlines())} lines" for m, p in MODULES.items()
                if len(open(p).readlines()) > MAX_FILE_LINES]
  long_functions = []
  for m, tree in TREES.items():
    if m.startswith("jaxdiff.models"):
      continue  # network definitions
    skip = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and _is_network(c)
            for f in ast.walk(c)}
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(node) not in skip:
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION_LINES:
          long_functions.append(f"{m}.{node.name}: {n} lines")
  assert not long_files, long_files
  assert not long_functions, long_functions


def _anchors(path: str) -> set[str]:
  out = set()
  for line in open(path):
    if line.startswith("#"):
      title = line.lstrip("#").strip().lower()
      out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
  return out


@pytest.mark.parametrize("tree", ["jaxdiff", "configs"])
def test_code_cites_docs_that_exist_and_no_outside_document(tree):
  docs = os.path.join(ROOT, "docs")
  bad = []
  for dirpath, _, files in os.walk(os.path.join(ROOT, tree)):
    for f in files:
      if not f.endswith(".py"):
        continue
      text = open(os.path.join(dirpath, f)).read()
      where = os.path.relpath(os.path.join(dirpath, f), ROOT)
      if re.search(r"spec ?(§|section )?\d|\.\./shared|algorithms\.md", text):
        bad.append(f"{where}: cites a document outside the repository")
      for page, anchor in re.findall(r"docs/([\w-]+\.md)(?:#([\w-]+))?", text):
        path = os.path.join(docs, page)
        if not os.path.exists(path):
          bad.append(f"{where}: docs/{page} does not exist")
        elif anchor and anchor not in _anchors(path):
          bad.append(f"{where}: docs/{page}#{anchor} is not a heading there")
  assert not bad, "\n".join(bad)
