"""The structure the code promises: pure modules import neither Ray nor MLflow, the
packages have no import cycle, the results path flows one way, and names are spelled once."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workers", "orchestrator")
PURE = ("workers.loop", "workers.losses", "workers.forward", "workers.precision", "workers.schedules", "workers.metrics",
        "workers.estimate", "workers.judges", "workers.generate", "orchestrator.pareto", "orchestrator.space",
        "orchestrator.adaptive", "orchestrator.earlystop")


def test_pure_modules_import_neither_ray_nor_mlflow():
    code = f"import sys; import {', '.join(PURE)}; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def imports() -> dict[str, set[str]]:
    """module -> the project modules it imports, at the top or inside a function."""
    graph = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"{package}.{path.stem}"
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                else:
                    continue
                found |= {t for t in targets if t.split(".")[0] in PACKAGES and (ROOT / f"{t.replace('.', '/')}.py").exists()}
            graph[name] = found - {name}
    return graph


def test_no_import_cycle_and_workers_never_import_the_driver():
    graph = imports()
    assert len(graph) > 20
    assert not [(m, d) for m, deps in graph.items() if m.startswith("workers.") for d in deps if d.startswith("orchestrator.")]

    def cycle_from(node, path, done):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        done.add(node)
        for dep in sorted(graph.get(node, ())):
            if found := cycle_from(dep, path + [node], done):
                return found
        return None

    done: set[str] = set()
    for module in sorted(graph):
        assert cycle_from(module, [], done) is None, f"import cycle: {' -> '.join(cycle_from(module, [], set()))}"


def test_the_store_does_not_reach_back_into_the_sweep():
    assert "orchestrator.sweep" not in imports()["orchestrator.store"]


def product_code() -> str:
    return "\n".join(p.read_text() for d in (*PACKAGES, "bench") for p in sorted((ROOT / d).glob("*.py")))


def test_each_schedule_name_and_metric_key_is_spelled_once():
    code = product_code()
    for name in ("sequential", "mix", "alright", "maxright"):
        assert len(re.findall(rf"[\"']{name}[\"']", code)) == 1, name
    for key in ("eval/sft_loss", "eval/dpo_loss", "eval/pref_accuracy", "rewards/margin", "time/train_s", "time/eval_s",
                "time/setup_s", "system/peak_mem_mb", "train/", "updates/", "tokens/", "hypervolume/", "f_star/"):
        assert len(re.findall(rf"[\"']{re.escape(key)}", code)) == 1, key


def test_the_readme_layout_names_every_module_and_only_those():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    blocks = re.split(r"(?m)^(?=\S+/ )", layout)
    for package in PACKAGES:
        block = next(b for b in blocks if b.startswith(f"{package}/"))
        named = set(re.findall(r"([a-z_]+\.py)", block))
        files = {p.name for p in (ROOT / package).glob("*.py")} - {"__init__.py", "__main__.py"}
        assert named == files, (package, sorted(named - files), sorted(files - named))
    tests = next(b for b in blocks if b.startswith("tests/"))
    for sub in ("workers", "orchestrator", "bench", "e2e", "e2e/faults", "support"):
        assert f"{sub.rsplit('/', 1)[-1]}/" in tests and (ROOT / "tests" / sub).is_dir(), sub
