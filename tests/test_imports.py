"""The import graph of the project's packages has no cycle (function-level imports count too)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "extractors", "models")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Modules of the project that `name` imports anywhere in its body (not under `if TYPE_CHECKING:`)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for n in child.orelse:
                    walk(n)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = (".".join(package.split(".")[:len(package.split(".")) - child.level + 1] + ([child.module] if
                        child.module else [])) if child.level else child.module) or ""
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in child.names)
            walk(child)

    walk(ast.parse(path.read_text()))
    out = set()
    for m in found:
        while m and m not in mods:
            m = m.rpartition(".")[0]
        if m and m != name:
            out.add(m)
    return out


def test_no_import_cycles():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 2:
            return
        if state.get(m) == 1:
            cycles.append(trail[trail.index(m):] + [m])
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, trail + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert "pipeline.training.run" in graph["pipeline.runner"] or "pipeline.training" in graph["pipeline.runner"]


def test_no_source_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"split these along their seams: {long}"


def test_the_pipeline_core_names_no_task_and_no_method():
    """report.py, embed.py, query.py, serve/ and training/ reach tasks and methods through the registries and the task contract only:
    no string literal of theirs is a task's or a method's name (planting `if task == "pairs"` fails this)."""
    from pipeline.registry import EVALUATORS, TASKS, TRAINERS

    names = set(TASKS.names()) | set(TRAINERS.names()) | set(EVALUATORS.names())
    names |= {a for n in TASKS.names() for a in vars(TASKS.get(n)).get("aliases", ()) if a}
    core = [ROOT / "pipeline" / "report.py", ROOT / "pipeline" / "embed.py", ROOT / "pipeline" / "query.py",
            *(ROOT / "pipeline" / "training").glob("*.py"), *(ROOT / "pipeline" / "serve").glob("*.py")]
    found = {(p.name, node.value) for p in core for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names}
    assert not found, f"task or method names in the pipeline core: {sorted(found)}"
