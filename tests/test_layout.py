"""The codebase's shape: no module imports one that imports it back (directly or through others); the core (the top
level, formats/) never imports tools/, which import it; train.py names no method; and the method modules a reader
copies hold the method alone: no data parallelism in them."""
import ast
import os
import re

from conftest import ROOT

METHOD_MODULES = ('lotep', 'lorsp', 'grouped_vp', 'baselines', 'backbones')
PACKAGES = ('theory', 'tools', 'formats')  # folders of modules: the top level's are named by file, theirs as
#   tools.NAME (theory's by file)


def project_imports():
    """module -> the project's modules it imports (anywhere in the file: a function's import counts too); the top
    level's and theory/'s by name, tools/'s as tools.NAME."""
    files = [f for f in os.listdir(ROOT) if f.endswith('.py')] + [os.path.join(d, f) for d in PACKAGES
                                                                 for f in os.listdir(os.path.join(ROOT, d))
                                                                 if f.endswith('.py')]
    name = lambda f: f[:-3].replace(os.sep, '.').removeprefix('theory.').removesuffix('.__init__')
    mine = {name(f) for f in files}
    graph = {}
    for f in files:
        names = set()
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, f)).read())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names} | {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module, node.module.split('.')[0]} | {f'{node.module}.{a.name}' for a in node.names}
            elif isinstance(node, ast.Call) and getattr(node.func, 'id', None) == '__import__' and node.args and \
                    isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value).split('.')[0])
        graph[name(f)] = sorted((names & mine) - {name(f)})
    return graph


def test_the_top_level_holds_what_a_reader_reads_first():
    """The method files and the few a run needs; the tools live in tools/."""
    top = sorted(f for f in os.listdir(ROOT) if f.endswith('.py'))
    assert len(top) <= 11 and {'train.py', 'lotep.py', 'lorsp.py', 'grouped_vp.py', 'baselines.py', 'data.py'} <= \
        set(top), top


def cycle(graph):
    """A cycle of imports as a list of modules, or None (depth-first search, three colours)."""
    state, path = {}, []

    def visit(m):
        state[m] = 'open'
        path.append(m)
        for n in graph.get(m, ()):
            if state.get(n) == 'open':
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = 'done'
        path.pop()
        return None
    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    graph = project_imports()
    assert {'train', 'tools.bench', 'tools.serve', 'tools.compare', 'methods'} <= set(graph)
    assert cycle(graph) is None, ' -> '.join(cycle(graph))
    assert cycle({'train': ['bench'], 'bench': ['serve'], 'serve': ['train']}) == ['bench', 'serve', 'train', 'bench']


def test_the_method_modules_hold_no_data_parallelism():
    for name in METHOD_MODULES:
        text = open(os.path.join(ROOT, f'{name}.py')).read()
        assert 'torch.distributed' not in text and 'import distributed' not in text, name


def test_the_core_never_imports_tools():
    """tools/ import the core; the core (every top-level module, anywhere in its file) never imports tools/."""
    graph = project_imports()
    core = [m for m in graph if '.' not in m and os.path.isfile(os.path.join(ROOT, f'{m}.py'))] + \
        [m for m in graph if m.startswith('formats')]
    assert {'train', 'runs', 'methods', 'data', 'formats', 'formats.images'} <= set(core)
    assert {m: [n for n in graph[m] if n.startswith('tools')] for m in core} == {m: [] for m in core}
    assert graph['tools.compare'] and any(n.startswith('tools') for n in graph['tools.compare'])  # the check sees them


def names_in_code(path):
    """Every identifier, attribute and string of a file's code (docstrings left out)."""
    tree = ast.parse(open(path).read())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef,
                  ast.ClassDef)) and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value,
                                                                                          ast.Constant)}
    found = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            found.add(n.id)
        elif isinstance(n, ast.Attribute):
            found.add(n.attr)
        elif isinstance(n, ast.alias):
            found.add(n.name.split('.')[0])
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            found |= set(re.findall(r'[a-z_0-9]+', n.value.lower()))
    return found


def test_train_names_no_method_and_imports_no_method_module():
    from methods import METHODS
    method_words = set(METHODS) | {'lorsp', 'lotep', 'evp', 'lorvp', 'vpt', 'lora', 'grouped_vp', 'baselines'}
    found = names_in_code(os.path.join(ROOT, 'train.py'))
    assert not found & method_words, found & method_words
    assert not set(project_imports()['train']) & set(METHOD_MODULES) - {'backbones'}
    assert names_in_code(os.path.join(ROOT, 'methods.py')) & method_words  # the check sees a method where one is
