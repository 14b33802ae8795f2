"""The one-way flow of the developers' guide, checked on the source: a module never imports a
module of a higher layer, calib's modules import each other without circles, and no module uses
another module's private (underscore) names. Lazy imports inside functions count everywhere."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "calib"

# (module prefix, layer): base -> readers -> statistics -> algorithms -> artifacts -> backends
# -> harness -> tuning (mixed-precision search) -> pipelines (collect runs a backend;
# pipeline.calibrate runs everything; mixed.search runs the search) -> CLI
LAYERS = [("calib.errors", 0), ("calib.utils", 0), ("calib.model", 0), ("calib.graph", 0), ("calib.version", 0),
          ("calib.datasets", 1), ("calib.stats", 2), ("calib.algorithms", 3),
          ("calib.cache", 4), ("calib.preparation", 4), ("calib.qdq", 4), ("calib.smooth", 4), ("calib.plan", 4),
          ("calib.backends", 5), ("calib.harness", 6), ("calib.tuning", 7),
          ("calib.collect", 8), ("calib.pipeline", 8), ("calib.mixed", 8), ("calib.sweep", 8),
          ("calib.distributed", 8),
          ("calib.cli", 9), ("calib.__main__", 9)]


def layer_of(module: str) -> int | None:
    hits = [(len(p), r) for p, r in LAYERS if module == p or module.startswith(p + ".")]
    return max(hits)[1] if hits else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def known_modules(root: Path) -> set[str]:
    return {module_name(f) for f in root.rglob("*.py")}


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(path: Path) -> list[tuple[str, list[str], int, dict[str, str]]]:
    """``(module, names, line, bound)`` per import statement of *path*: *module* absolute (calib's
    or not), *names* those of ``from module import ...`` (else empty), *bound* the local names
    the statement binds -> the dotted names they stand for."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names], node.lineno,
                        {a.asname or a.name: f"{target}.{a.name}" for a in node.names}))
        elif isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                out.append((a.name, [], node.lineno, {a.asname: a.name} if a.asname else {top: top}))
    return out


def _loaded(target: str, names: list[str], known: set[str]) -> list[str]:
    """What ``from target import names`` (``import target``: no names) loads: the modules
    ``target.name`` there are, and ``target`` itself unless every name is such a module."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
    return subs if names and len(subs) == len(names) else subs + [target]


def imported_modules(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """``(module, line)`` for each module an import statement of *path* loads (see :func:`_loaded`)."""
    return [(m, line) for target, names, line, _ in _imports(path) for m in _loaded(target, names, known)]


def upward_imports(root: Path = PKG) -> list[str]:
    known = known_modules(root)
    bad = []
    for f in sorted(root.rglob("*.py")):
        me = module_name(f)
        mine = layer_of(me)
        if mine is None:
            continue
        for target, line in imported_modules(f, known):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{me}:{line} imports {target} (layer {theirs} > {mine})")
    return bad


def test_every_module_has_a_layer():
    unknown = [module_name(f) for f in PKG.rglob("*.py") if layer_of(module_name(f)) is None
               and module_name(f) != "calib"]
    assert not unknown, f"modules without a layer in LAYERS: {unknown}"


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_the_check_sees_lazy_upward_imports(tmp_path):
    """The check itself can fail: a function-level import of the pipeline from a backend is found."""
    pkg = tmp_path / "calib"
    (pkg / "backends").mkdir(parents=True)
    (pkg / "backends" / "x.py").write_text("def f():\n    from ..pipeline import calibrate\n")
    global PKG
    saved, PKG = PKG, pkg
    try:
        assert upward_imports(pkg) == ["calib.backends.x:2 imports calib.pipeline (layer 8 > 5)"]
    finally:
        PKG = saved


# --------------------------------------------------------------------------- circles and private names
def import_graph(root: Path = PKG) -> dict[str, dict[str, int]]:
    """``{module: {calib module it imports: line}}``. ``from m import x`` imports the module
    ``m.x`` when there is one, else (it needs ``m``'s names) ``m``; importing a module first
    imports its packages, except the importer's own packages (a package's ``__init__`` importing
    its submodules is no circle by itself)."""
    known = known_modules(root)
    graph: dict[str, dict[str, int]] = {}
    for f in sorted(root.rglob("*.py")):
        me = module_name(f)
        mine = set(_ancestors(me)) | {me}
        edges = graph.setdefault(me, {})
        for target, names, line, _ in _imports(f):
            for t in _loaded(target, names, known):
                if t in known and t != me:
                    for dep in [a for a in _ancestors(t) if a not in mine] + [t]:
                        edges.setdefault(dep, line)
    return graph


def import_circles(root: Path = PKG) -> list[str]:
    """Each import circle among calib's modules once, as ``a:line -> b:line -> ... -> a``."""
    graph = import_graph(root)
    circles, seen = [], set()
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph.get(m, {})):
            if state.get(dep) == 1:
                cyc = path[path.index(dep):]
                if frozenset(cyc) not in seen:
                    seen.add(frozenset(cyc))
                    steps = [f"{a}:{graph[a][b]}" for a, b in zip(cyc, cyc[1:] + [dep], strict=True)]
                    circles.append(" -> ".join(steps + [dep]))
            elif dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return circles


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _outside(me: str, package: str) -> bool:
    return me != package and not me.startswith(package + ".")


def _private_module(me: str, module: str) -> str | None:
    """The first private part of *module* (``pkg._sub``) that *me*, outside ``pkg``, may not import."""
    parts = module.split(".")
    for i in range(1, len(parts)):
        if _private(parts[i]) and _outside(me, ".".join(parts[:i])):
            return ".".join(parts[:i + 1])
    return None


def private_imports(root: Path = PKG) -> list[str]:
    """Uses of another calib module's underscore names: ``from m import _x``, ``m._x`` on a name
    bound to a calib module (``import calib.m [as y]``, ``from pkg import m``), and imports of a
    package's private submodules from outside the package (its own modules may import them)."""
    known = known_modules(root)
    bad = []
    for f in sorted(root.rglob("*.py")):
        me = module_name(f)
        bound: dict[str, str] = {}      # local name -> calib module
        for target, names, line, binds in _imports(f):
            for mod in [target] + [f"{target}.{n}" for n in names if f"{target}.{n}" in known]:
                hit = _private_module(me, mod) if mod in known else None
                if hit:
                    bad.append(f"{me}:{line} imports {hit}")
            if target in known and target != me:
                bad += [f"{me}:{line} imports {target}.{n}" for n in names
                        if _private(n) and f"{target}.{n}" not in known]
            bound.update({k: v for k, v in binds.items() if v in known})
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            mod = bound.get(base.id) if isinstance(base, ast.Name) else None
            for a in reversed(chain) if mod else ():
                if _private(a) and mod != me and (f"{mod}.{a}" not in known or _outside(me, mod)):
                    bad.append(f"{me}:{node.lineno} uses {mod}.{a}")
                    break
                if f"{mod}.{a}" not in known:
                    break
                mod = f"{mod}.{a}"
    return sorted(set(bad))


def test_no_import_circles():
    assert import_circles() == []


def test_no_module_uses_another_modules_private_names():
    assert private_imports() == []


def _fake_package(tmp_path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "calib"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def _with_pkg(pkg: Path, check):
    global PKG
    saved, PKG = PKG, pkg
    try:
        return check(pkg)
    finally:
        PKG = saved


def test_the_check_sees_circles_through_lazy_imports_and_packages(tmp_path):
    """The circle check can fail: a function-level import closes a circle, and so does importing
    a package's submodule when the package's ``__init__`` imports the importer back."""
    pkg = _fake_package(tmp_path, {
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from .a import g\n",
        "smooth.py": "from .qdq.prepare import p\n",
        "qdq/__init__.py": "from .prepare import p\nfrom .quantize import q\n",
        "qdq/prepare.py": "from ..graph import G\n",
        "qdq/quantize.py": "from .prepare import p\n\ndef q():\n    from ..smooth import s\n",
        "graph.py": "",
    })
    got = _with_pkg(pkg, import_circles)
    assert got == ["calib.a:1 -> calib.b:2 -> calib.a",
                   "calib.qdq:2 -> calib.qdq.quantize:4 -> calib.smooth:1 -> calib.qdq"], got
    # a package importing its own submodules, which import each other one way, is no circle
    (pkg / "smooth.py").write_text("from .graph import G\n")
    (pkg / "b.py").write_text("")
    assert _with_pkg(pkg, import_circles) == []


def test_the_check_sees_private_names_imported_or_used(tmp_path):
    """The private-name check can fail: ``from .x import _y``, ``module._y`` on a module bound by
    ``from . import x`` / ``import calib.x as y``, and a lazy import of another package's private
    submodule; a package importing its own private submodule is fine."""
    pkg = _fake_package(tmp_path, {
        "x.py": "_y = 1\nz = 2\n",
        "a.py": "from .x import _y, z\n",
        "b.py": "from . import x\n\ndef f():\n    return x._y + x.z\n",
        "c.py": "import calib.x as cx\nimport calib.x\n\nv = cx._y + calib.x._y + cx.__name__\n",
        "p/__init__.py": "from ._impl import f\n",
        "p/_impl.py": "def f():\n    return 1\n",
        "d.py": "def g():\n    from .p._impl import f\n    from .p import _impl\n",
    })
    got = _with_pkg(pkg, private_imports)
    assert got == ["calib.a:1 imports calib.x._y", "calib.b:4 uses calib.x._y", "calib.c:4 uses calib.x._y",
                   "calib.d:2 imports calib.p._impl", "calib.d:3 imports calib.p._impl"], got
