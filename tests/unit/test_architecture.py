"""The package's shape, and the one place its import rules are written down.

The package is a few foundation modules and one folder per stage, in this order:

    errors, jsonl, backends        (foundation, at the top of workflow/meddpo)
    config      the schema, config files, the configuration reference
    questions   MedQuAD in, questions out, shards
    planning    paths, jobs, time limits, estimates, what the rules pass, the run's config check
    generation  shared types, answer store and resume, the transformers engine, vllm/
    gemini      the Gemini client, its errors, the shard job, batch mode
    dataset     the DPO row, pairs, verdicts on pairs, quality, validation, stats, report, card
    judge       the judges' texts and the judge stage
    preflight   checks before a run, the hub, `meddpo status`
    demo        what the demo builds (its tiny models)
    cli         the `meddpo` parser and its commands
    testing     the local Gemini server (tests, benchmarks and docs only: no stage imports it)

A module may import the foundation, its own folder and any folder above it in this list, never
one below. These tests read the source (ast), never import it, so an import inside a function
counts too, and a cycle is found even where Python would tolerate it at run time.
"""

import ast
import re
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "workflow" / "meddpo"
RULES = REPO / "workflow" / "rules"
FOUNDATION = ("errors", "jsonl", "backends")
STAGES = (
    "config",
    "questions",
    "planning",
    "generation",
    "gemini",
    "dataset",
    "judge",
    "preflight",
    "demo",
    "cli",
    "testing",
)


def _name(path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, modules) -> set[str]:
    """The package modules one module imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"relative import of {node.module}: the package imports by full name"
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found.update(name for name in names if name in modules)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(tree, modules) - {name} for name, tree in modules.items()}


def _rank(module: str) -> int:
    """0 for the foundation, else 1 + the stage's place in STAGES."""
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in (*FOUNDATION, "__main__", "__init__") or module == "meddpo":
        return 0
    return 1 + STAGES.index(parts[1])


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


def test_the_top_holds_only_the_foundation_and_the_stage_folders():
    modules = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert modules == sorted(["__init__", "__main__", *FOUNDATION])
    folders = sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__")
    assert folders == sorted(STAGES)


def test_no_import_cycle_in_the_package():
    assert _cycle(_graph()) is None


def test_no_module_imports_a_later_stage():
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _rank(target) > _rank(module) and module != "meddpo.__main__"  # the entry point runs the CLI
    )
    assert upward == []


def test_the_rule_checker_sees_an_upward_import():
    # the checker itself: the questions stage may read config, never the dataset stage
    assert _rank("meddpo.questions.build") > _rank("meddpo.config.settings")
    assert _rank("meddpo.dataset.pairs") > _rank("meddpo.questions.build") > _rank("meddpo.jsonl")


def test_production_code_never_imports_the_test_servers():
    importing = sorted(
        module
        for module, targets in _graph().items()
        if not module.startswith("meddpo.testing") and any(t.startswith("meddpo.testing") for t in targets)
    )
    assert importing == []


# Comparisons with a backend, engine or Gemini mode name: only the registry may make them.
NAME_CHOICE = re.compile(
    r"""(==|!=|\bin\b)\s*\(?\s*["'](vllm|padded|continuous|gemini|local|batch|online)["']"""
)


def test_backend_and_mode_names_are_compared_in_the_registry_only():
    # the rule files too: a rule picks its backend through the package
    files = [*PACKAGE.rglob("*.py"), *RULES.glob("*.smk"), REPO / "Snakefile"]
    choosing = sorted(
        str(path.relative_to(REPO)) for path in files if NAME_CHOICE.search(path.read_text()) is not None
    )
    assert choosing == ["workflow/meddpo/backends.py"]
    assert NAME_CHOICE.search('mode == "batch"') and NAME_CHOICE.search("engine in ('vllm',)")


# Prose about what a module may import: the rules above are the only statement of them.
LAYERING_PROSE = re.compile(
    r"\b(may|must|can|never|only|not) imports?\b|\bimports? (nothing|only|none|no )|"
    r"\bimport(s|ed)? (it|this module)\b|\bleaf module|\bstands? (above|below)",
    re.IGNORECASE,
)


def test_docstrings_do_not_restate_the_import_rules():
    restating = sorted(
        name
        for name, tree in _modules().items()
        if (doc := ast.get_docstring(tree)) and LAYERING_PROSE.search(doc.replace("\n", " "))
    )
    assert restating == []
    assert LAYERING_PROSE.search("It may import any module below it") is not None


def test_modules_and_functions_are_small():
    too_long_modules = {
        name: n
        for name, path in ((_name(p), p) for p in PACKAGE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > 500
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
# Snakefile; everything else on `workflow` (config files, rules, executor, DAG) is internal. A file
# name in a path ("workflow/report/workflow.rst") is no attribute.
SNAKEMAKE_INTERNALS = re.compile(
    r"(?<![\w/])workflow\.(?!basedir\b)\w|\bdag\b|exec_mode|\.raw\b|needrun|\bcheckpoints\.\w|\bon(start|success|error):"
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


def _top_level_imports(tree: ast.Module) -> set[str]:
    """What a module imports when it is loaded: its import statements outside functions."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_what_the_rule_files_import_loads_with_the_standard_library_and_pyyaml():
    # Snakemake parses the rule files in every run, dry runs and a cluster job's own start included:
    # what they import must load in a second, without torch, transformers, datasets or the SDK
    modules = _modules()
    rule_text = "\n".join(path.read_text() for path in [*RULES.glob("*.smk"), REPO / "Snakefile"])
    todo = sorted(set(re.findall(r"^\s*from (meddpo[\w.]*) import", rule_text, re.MULTILINE)))
    seen, outside = set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _top_level_imports(modules[name]):
            if imported in modules:
                todo.append(imported)
            elif not imported.startswith("meddpo"):
                outside.add(imported.split(".")[0])
    assert "meddpo.planning.checks" in seen and "meddpo.config.settings" in seen
    assert outside - set(sys.stdlib_module_names) == {"yaml"}


def test_make_test_keeps_each_test_file_on_one_process():
    # make test's side-by-side run relies on pytest-xdist's groups: a file's module fixtures (the
    # Slurm cluster) must not start on two processes at once. (pytest 9.2.0 broke this silently.)
    files = ["tests/unit/test_jsonl.py", "tests/unit/test_shards.py", "tests/unit/test_answer_store.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-n", "2", "--dist", "loadgroup"]
        + ["--no-loadscope-reorder", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:]
    passed = re.findall(r"^\[(gw\d)\] .*PASSED (tests/\w+/\w+\.py)::\S+@(\S+)", run.stdout, re.MULTILINE)
    workers = {}
    for worker, path, group in passed:
        assert group == path.rpartition("/")[2]
        workers.setdefault(path, set()).add(worker)
    assert sorted(workers) == sorted(files) and all(len(w) == 1 for w in workers.values()), workers
