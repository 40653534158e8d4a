"""The package's floors: imports only go down (docs/architecture.md).

Walks every module of `mmvaeplus_jax` with `ast` (nothing is imported or
run) and fails on an import of the package that runs back up a floor,
crosses between two rooms of one floor that must not know each other
(`training/` and `evaluation/`, `core/` and `infra/`), closes a circle, or
hides inside a function.
"""

import ast
import pathlib

import pytest

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'mmvaeplus_jax'

# Room -> floor (1 = the ground). A room is a subpackage, or a top-level
# module. A room may import its own modules and any room of a lower floor.
FLOORS = {
    'core': 1, 'infra': 1,
    'input': 2,
    'models': 3,
    'configs': 4, 'generation': 4, 'train_state': 4,
    'sample_grids': 5,
    'training': 6, 'evaluation': 6,
    'experiments': 7,
    'tools': 8,
}
FACE = 'mmvaeplus_jax'  # the package's __init__: re-exports the public API

# Imports of the package allowed inside a function: none.
ALLOWED_IN_FUNCTIONS = {}


def module_name(path: pathlib.Path) -> str:
  parts = ('mmvaeplus_jax',) + path.relative_to(ROOT).with_suffix('').parts
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def room(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else FACE


def package_imports(path: pathlib.Path, me: str | None = None):
  """[(imported module, line, inside a function)] of the package, for the
  module `me` (default: the one at `path`)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  in_function = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      in_function.update(id(n) for n in ast.walk(node) if n is not node)
  me = me or module_name(path)
  package = me if path.name == '__init__.py' else me.rsplit('.', 1)[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split('.')
        base = base[:len(base) - node.level + 1]
        prefix = '.'.join(base + ([node.module] if node.module else []))
      else:
        prefix = node.module or ''
      # `from a.b import c`: c may be a module or a name in a.b.
      targets = [f'{prefix}.{a.name}' for a in node.names]
    else:
      continue
    for t in targets:
      if t == 'mmvaeplus_jax' or t.startswith('mmvaeplus_jax.'):
        out.append((_resolve(t), node.lineno, id(node) in in_function))
  return out


def _resolve(target: str) -> str:
  """The module a dotted import names (`a.b.Name` -> `a.b`)."""
  parts = target.split('.')
  while len(parts) > 1:
    p = ROOT.parent.joinpath(*parts)
    if p.with_suffix('.py').is_file() or (p / '__init__.py').is_file():
      return '.'.join(parts)
    parts = parts[:-1]
  return 'mmvaeplus_jax'


MODULES = sorted(ROOT.rglob('*.py'))
GRAPH = {module_name(p): package_imports(p) for p in MODULES}


def test_every_room_has_a_floor():
  rooms = {room(m) for m in GRAPH} - {FACE}
  assert rooms <= set(FLOORS), (
      f'rooms without a floor: {sorted(rooms - set(FLOORS))}: add them to'
      ' FLOORS here and to docs/architecture.md')


def upward_imports(graph) -> list[str]:
  bad = []
  for module, imports in graph.items():
    src = room(module)
    if src == FACE:
      continue
    for target, line, _ in imports:
      dst = room(target)
      if dst == src:
        continue
      if dst == FACE or FLOORS[dst] >= FLOORS[src]:
        bad.append(f'{module}:{line} imports {target} ({dst}, floor'
                   f' {FLOORS.get(dst, "top")}) from floor {FLOORS[src]}')
  return bad


def imports_in_functions(graph) -> list[str]:
  return [f'{m}:{line} imports {t} inside a function'
          for m, imports in graph.items() for t, line, inside in imports
          if inside and t not in ALLOWED_IN_FUNCTIONS.get(m, ())]


def test_imports_only_go_down():
  bad = upward_imports(GRAPH)
  assert not bad, 'imports that do not go down:\n' + '\n'.join(bad)


def test_no_imports_inside_functions():
  bad = imports_in_functions(GRAPH)
  assert not bad, '\n'.join(bad)


def test_no_import_circles():
  edges = {m: {t for t, _, _ in imports if t != m and t in GRAPH}
           for m, imports in GRAPH.items()}
  # A package's __init__ importing its own submodules is how a package
  # re-exports; a submodule importing its package's face back is a circle.
  state, stack, circles = {}, [], []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for t in sorted(edges[m]):
      if state.get(t) == 'open':
        circles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = 'done'

  for m in sorted(edges):
    if m not in state:
      visit(m)
  assert not circles, 'import circles:\n' + '\n'.join(
      ' -> '.join(c) for c in circles)


@pytest.mark.parametrize('bad_source, check, expected', [
    ('from mmvaeplus_jax.training import loop\n', upward_imports,
     'evaluation.api:1 imports mmvaeplus_jax.training.loop'),
    ('from mmvaeplus_jax import generation\n', lambda g: [], None),
    ('def f():\n  from mmvaeplus_jax.core import types\n',
     imports_in_functions, 'evaluation.api:2 imports'),
])
def test_the_checks_catch_a_violation(tmp_path, bad_source, check, expected):
  """An evaluation module importing training, or an import hidden in a
  function, is reported (the rules cannot pass vacuously); an import that
  goes down is not."""
  fake = tmp_path / 'api.py'
  fake.write_text(bad_source)
  imports = package_imports(fake, 'mmvaeplus_jax.evaluation.api')
  assert imports, 'the fake module imports the package'
  graph = {'mmvaeplus_jax.evaluation.api': imports}
  assert not upward_imports(graph) if expected is None else True
  found = check(graph)
  if expected is not None:
    assert len(found) == 1 and expected in found[0], found
