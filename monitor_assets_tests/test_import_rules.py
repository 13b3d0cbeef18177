"""The package's layers, checked by parsing every module's imports (including those inside functions).

- The statistics core (`monitor_assets.stats`) imports nothing else of the package.
- A stage imports another stage only through `storage` (the door to the tables); shared modules
  (`config`, `constants`, `keys`, `formatting`, `wiring`) are open to all.
- Only the entry points (`definitions`, `run_pipeline`) import the entry points.
"""

import ast
from pathlib import Path

PACKAGE = "monitor_assets"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE  # parsed, not imported
STAGES = ("ingestion", "metrics", "analysis", "history", "alerting", "reporting", "notify", "export",
          "retraining", "storage", "estimation", "segments", "evaluation", "multivariate")
OPEN_TO_STAGES = ("storage", "config", "constants", "keys", "formatting", "wiring")
# Stages built on another stage's stored work, each named with why (one direction only, never a cycle): the
# evaluation store judges a window's multivariate drift with the multivariate stage's fitted references and the
# day samples it keeps (`multivariate.logic.references`, `judged`, `SAMPLES`), rather than a second copy of them;
# the segments' estimates are judged against the floor the segment performance check uses (`segments.logic.judge`,
# `reference_segments`, `ALPHA`), not a second spelling of that rule.
BUILT_ON = {("evaluation", "multivariate"), ("estimation", "segments")}
ENTRY_POINTS = (f"{PACKAGE}.definitions", f"{PACKAGE}.run_pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of the package in the file, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from monitor_assets import stats` imports the module `monitor_assets.stats`
            found += ([(node.lineno, f"{target}.{alias.name}") for alias in node.names] if target == PACKAGE
                      else [(node.lineno, target)])
    return [(line, m) for line, m in found if m == PACKAGE or m.startswith(PACKAGE + ".")]


def top_part(module: str) -> str:
    """`monitor_assets.alerting.rules` -> `alerting`; `monitor_assets` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def all_imports() -> list[tuple[str, int, str]]:
    return [(module_name(path), line, target) for path in sorted(ROOT.rglob("*.py"))
            for line, target in imported_modules(path)]


def assert_none(rule) -> None:
    found = [f"{source}:{line} imports {target}" for source, line, target in all_imports() if rule(source, target)]
    assert not found, "\n".join(["imports that break the rule:", *found])


def test_the_statistics_core_imports_nothing_else_of_the_package():
    assert_none(lambda source, target: top_part(source) == "stats" and top_part(target) != "stats")


def test_stages_meet_only_through_storage_and_shared_modules():
    def crosses(source: str, target: str) -> bool:
        home, other = top_part(source), top_part(target)
        return (home in STAGES and other != home and other in STAGES and other not in OPEN_TO_STAGES
                and (home, other) not in BUILT_ON)

    assert_none(crosses)


def test_only_entry_points_import_the_entry_points():
    def upward(source: str, target: str) -> bool:
        return any(target == e or target.startswith(e + ".") for e in ENTRY_POINTS) and source not in ENTRY_POINTS

    assert_none(upward)
