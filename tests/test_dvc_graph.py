"""dvc.yaml is the code's graph: every stage declares exactly the `cml` modules it executes and reads only
params.yaml keys that exist; params.yaml restates no default of the recipe (the config dataclasses)."""
from __future__ import annotations

import ast
import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cml.cli import COMMANDS, main
from cml.params import build, load_params
from cml.sections import sections
from cml.train.config import TrainConfig
from tests.helpers import ROOT

PACKAGE = ROOT / "cml"


def cml_imports(source: str) -> set[str]:
    """The `cml` modules a piece of code imports, anywhere in it (a function-level import runs too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cml":
            package = PACKAGE.parent / node.module.replace(".", "/")
            found |= {f"{node.module}.{a.name}" for a in node.names} if package.is_dir() else {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cml"}
    return {m for m in found if not (PACKAGE.parent / m.replace(".", "/")).is_dir()}  # packages: see below


def closure(modules: set[str]) -> set[str]:
    """The modules and everything they import from `cml`, transitively."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += cml_imports((PACKAGE.parent / f"{module.replace('.', '/')}.py").read_text())
    return seen


def notebook_imports(path: Path) -> set[str]:
    cells = json.loads(path.read_text())["cells"]
    return set().union(*(cml_imports("".join(c["source"])) for c in cells if c["cell_type"] == "code"))


def executed(cmd: str) -> set[str]:
    """The `cml` modules a stage's command runs: each `cml COMMAND` (the CLI and that command's module) and each
    notebook papermill executes."""
    modules = set()
    for part in re.split(r"&&|;", cmd):
        words = shlex.split(part)
        if words[:1] == ["cml"]:
            command = next(w for w in words[1:] if not w.startswith("-"))
            modules |= {"cml.cli", f"cml.{COMMANDS[command][0]}"}
        elif words[:1] == ["papermill"]:
            modules |= notebook_imports(ROOT / words[1])
    return closure(modules)


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def body(stage: dict) -> dict:
    return stage.get("do", stage)  # foreach stages keep their definition under `do`


@pytest.mark.parametrize("name", list(stages()))
def test_every_stage_declares_exactly_the_modules_it_executes(name):
    stage = body(stages()[name])
    declared = {d[:-3].replace("/", ".") for d in stage["deps"] if d.startswith("cml/") and d.endswith(".py")}
    needed = executed(stage["cmd"])
    assert not needed - declared, f"{name} runs but does not declare: {sorted(needed - declared)}"
    assert not declared - needed, f"{name} declares but never runs: {sorted(declared - needed)}"
    notebooks = {d for d in stage["deps"] if d.endswith(".ipynb")}
    assert notebooks == set(re.findall(r"papermill (\S+\.ipynb)", stage["cmd"])), name


@pytest.mark.parametrize("init", sorted(PACKAGE.glob("**/__init__.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_package_inits_hold_no_code_a_stage_could_depend_on(init):
    """Every __init__.py runs with the imports below it but is left out of the deps: it must stay a docstring
    (and cml's a version string)."""
    tree = ast.parse(init.read_text())
    assert all(isinstance(n, ast.Expr) or (isinstance(n, ast.Assign) and n.targets[0].id == "__version__")
               for n in tree.body)


def test_training_and_embedding_do_not_pull_in_clustering_or_elki():
    for command in ("train", "embed", "features", "tracks"):
        modules = closure({f"cml.{COMMANDS[command][0]}"})
        assert not modules & {"cml.cluster.methods", "cml.cluster.elki", "cml.playlist.hull", "cml.spotify.client", "cml.spotify.http"}, (command, modules)


def test_stage_params_exist_in_params_yaml():
    """Every params entry a stage lists, and every ${...} it interpolates, is a key of params.yaml (DVC needs it)."""
    params = load_params(ROOT / "params.yaml")

    def lookup(key: str):
        value = params
        for part in key.split("."):
            assert isinstance(value, dict) and part in value, f"params.yaml has no {key}"
            value = value[part]
        return value

    text = (ROOT / "dvc.yaml").read_text()
    for key in set(re.findall(r"\$\{([a-z_.]+)\}", text)) - {"item", "item.variant", "item.seed"}:
        lookup(key)
    for name, stage in stages().items():
        for entry in body(stage).get("params", []):
            lookup(entry)


def test_params_yaml_sets_only_what_the_study_changes():
    """One source of every default: the config dataclasses are the recipe. params.yaml loads through the strict
    loader, holds every key that has no default, and restates no default (it would hide a change of the recipe)."""
    params = load_params(ROOT / "params.yaml")
    classes = sections()
    assert set(params) <= set(classes), f"unknown sections {set(params) - set(classes)}"
    for section, cls in classes.items():
        values = params.get(section) or {}
        build(cls, values, section)  # unknown keys raise
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                assert f.name in values, f"params.yaml must set {section}.{f.name} (it has no default)"
            elif f.name in values:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                assert values[f.name] != default, f"params.yaml restates the default {section}.{f.name}"


def test_notebook_parameter_cells_hold_paths_and_the_params_file_only():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
        for node in ast.parse("".join(cell["source"])).body:
            name = node.targets[0].id
            value = node.value.value
            is_path = isinstance(value, str) and ("/" in value or value.endswith((".yaml", ".csv", ".parquet")))
            assert is_path or name in {"variant", "seed", "init", "attention_examples"}, f"{path.name}: {name} = {value!r}"


def test_cml_params_prints_the_recipe_with_the_study_s_overrides(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text() + "\n")
    assert main(["params", "--params", str(params)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert set(printed) == set(sections())
    assert printed["train"]["epochs"] == TrainConfig().epochs and "variant" not in printed["model"]
    text = params.read_text().replace("train: {}", "train: {epochs: 3}")
    params.write_text(text)
    assert main(["params", "train", "--params", str(params)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"train": {**printed["train"], "epochs": 3}}
    params.write_text(text.replace("train: {epochs: 3}", "train: {epoch: 3}"))
    assert main(["params", "--params", str(params)]) == 2
    assert "unknown keys in 'train': ['epoch']" in capsys.readouterr().err


def committed_results() -> list[str]:
    """The metrics files and plot tables dvc.yaml keeps out of DVC's cache, so that git carries them."""
    paths = []
    for stage in map(body, stages().values()):
        for entry in stage.get("metrics", []) + stage.get("plots", []) + stage.get("outs", []):
            if isinstance(entry, dict):
                (path, options), = entry.items()
                if options.get("cache") is False:
                    paths.append(path)
    return paths


def test_every_metrics_file_is_committed_not_cached():
    """`dvc metrics diff` reads HEAD's metrics from git: a cached one would be missing on a fresh clone."""
    metrics = [next(iter(m)) if isinstance(m, dict) else m for s in map(body, stages().values())
               for m in s.get("metrics", [])]
    assert metrics and set(metrics) <= set(committed_results())
    for path in committed_results():
        path = path.replace("${item.variant}-s${item.seed}", "none-s0")
        inside = path if Path(path).suffix else f"{path}/plots/metrics/lr.tsv"  # a folder: a file in it
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", inside], cwd=ROOT).returncode == 1, path


def test_metrics_diff_works_on_a_fresh_clone(tmp_path):
    """Clone, change one committed metric as a run would: `dvc metrics diff` shows HEAD's value beside it."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    path = clone / "outputs/evaluate/metrics.json"
    assert path.is_file(), "HEAD holds no evaluate metrics: run make repro and commit them"
    metrics = json.loads(path.read_text())
    key, old = next((k, v) for k, v in _flatten(metrics).items() if isinstance(v, float))
    _set(metrics, key, old + 1.0)
    path.write_text(json.dumps(metrics))
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    proc = subprocess.run([dvc, "metrics", "diff", "--json"], cwd=clone, capture_output=True, text=True)
    assert proc.returncode == 0 and "failed to load" not in proc.stderr.lower(), proc.stderr
    diff = json.loads(proc.stdout)["outputs/evaluate/metrics.json"][key]
    assert diff["old"] == pytest.approx(old) and diff["new"] == pytest.approx(old + 1.0)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[p]
    d[last] = value
