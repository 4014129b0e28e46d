"""The package's shape: no import cycle, stages that only look down, small modules and functions,
one module that picks an engine, and Snakemake internals read in one rule file only.

These read the source (ast), never import it, so a cycle is found even where Python would
tolerate it at run time (a function-level import counts too)."""

import ast
import re

from conftest import REPO

PACKAGE = REPO / "workflow" / "meddpo"
RULES = REPO / "workflow" / "rules"


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """The package modules one module imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("meddpo."):
                found.add(node.module.split(".")[1])
            elif node.module == "meddpo":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("meddpo."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(tree) & set(modules) - {name} for name, tree in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        stack.append(name)
        for nxt in sorted(graph[name]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    # the checker itself: a -> b -> c -> a is a cycle, a -> b -> c is not
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    assert _cycle(_graph()) is None


def test_earlier_stages_do_not_import_the_judge():
    graph = _graph()
    for stage in (
        "pairs",
        "quality",
        "validate",
        "stats",
        "plots",
        "report",
        "report_format",
        "dataset",
        "dataset_card",
    ):
        assert "judge" not in graph[stage], f"{stage} imports judge"


def test_the_engines_depend_only_on_the_shared_types():
    graph = _graph()
    assert "vllm_engine" not in graph["local_generation"] and "local_generation" not in graph["vllm_engine"]
    for engine in ("local_generation", "vllm_engine", "gemini_client"):
        assert "engine_types" in graph[engine] or engine == "gemini_client", engine
        assert not graph[engine] & {"engines", "judge", "gemini_teacher", "cli", "pairs", "report"}, engine
    assert graph["engine_types"] <= {"errors", "settings", "chat_format"}


ENGINE_CHOICE = re.compile(r"""(==|!=|\bin\b)\s*\(?\s*["'](vllm|padded|continuous|gemini|local)["']""")


def test_an_engine_is_chosen_in_one_module_only():
    # the rule files too: a rule picks its engine or backend through the package
    files = [*PACKAGE.glob("*.py"), *RULES.glob("*.smk"), REPO / "Snakefile"]
    choosing = sorted(path.name for path in files if ENGINE_CHOICE.search(path.read_text()) is not None)
    assert choosing == ["backends.py"]


def test_modules_and_functions_are_small():
    too_long_modules = {
        path.name: n for path in PACKAGE.glob("*.py") if (n := len(path.read_text().splitlines())) > 500
    }
    assert too_long_modules == {}
    too_long_functions = {}
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := node.end_lineno - node.lineno + 1) > 60:
                    too_long_functions[f"{name}.{node.name}"] = n
    assert too_long_functions == {}


# workflow.basedir (where the project lies) is Snakemake's documented way to find files next to the
# Snakefile; everything else on `workflow` (config files, rules, executor, DAG) is internal
SNAKEMAKE_INTERNALS = re.compile(
    r"\bworkflow\.(?!basedir\b)\w|\bdag\b|exec_mode|\.raw\b|needrun|\bcheckpoints\.\w|\bon(start|success|error):"
)


def test_snakemake_internals_are_read_in_one_rule_file():
    reading = sorted(
        path.name
        for path in [*RULES.glob("*.smk"), REPO / "Snakefile"]
        if any(SNAKEMAKE_INTERNALS.search(line.split("#")[0]) for line in path.read_text().splitlines())
    )
    assert reading == ["internals.smk"]
    assert len((RULES / "common.smk").read_text().splitlines()) < 150


def test_the_package_never_imports_snakemake():
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "snakemake" for a in node.names), name
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "snakemake", name


def test_make_test_keeps_each_test_file_on_one_process():
    # make test's side-by-side run relies on pytest-xdist's groups: a file's module fixtures (the
    # Slurm cluster) must not start on two processes at once. (pytest 9.2.0 broke this silently.)
    import subprocess
    import sys

    files = ["tests/test_jsonl.py", "tests/test_shards.py", "tests/test_answer_store.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-n", "2", "--dist", "loadgroup"]
        + ["--no-loadscope-reorder", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:]
    passed = re.findall(r"^\[(gw\d)\] .*PASSED (tests/\w+\.py)::\S+@(\S+)", run.stdout, re.MULTILINE)
    workers = {}
    for worker, path, group in passed:
        assert group == path.removeprefix("tests/")
        workers.setdefault(path, set()).add(worker)
    assert sorted(workers) == sorted(files) and all(len(w) == 1 for w in workers.values()), workers
