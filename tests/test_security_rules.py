"""Security rules, checked on the source tree and by behaviour.

1. YAML is only ever loaded safely. 2. No eval/exec/compile of strings, no shell=True, no os.system.
3. trust_remote_code is never hard-coded true: it comes from each model's own setting (default false).
4. Only safetensors are read unless a model sets allow_pickle (no unpickling otherwise, torch.load only
with weights_only=True). 5. Outputs stay under the results root (tests/test_hostile_input.py).
"""
from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest

from lmsweep.cli import main

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["jobs", "runner", "submit", "results", "lmsweep"]
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
               "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}


def python_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    files += sorted((REPO / "tests").glob("*.py"))
    assert len(files) > 30
    return files


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def where(node: ast.AST) -> str:
        return f"{path}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else None
            if name in ("eval", "exec", "compile", "__import__"):
                found.append(f"{where(node)}: {name}()")
            dotted = ast.unparse(func)
            if dotted in ("os.system", "os.popen", "pickle.load", "pickle.loads", "dill.load", "joblib.load",
                          "marshal.loads", "shelve.open"):
                found.append(f"{where(node)}: {dotted}()")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{where(node)}: {dotted}(shell=...)")
                if kw.arg == "trust_remote_code" and isinstance(kw.value, ast.Constant) and kw.value.value:
                    found.append(f"{where(node)}: {dotted}(trust_remote_code=True)")
                if kw.arg == "Loader" and ast.unparse(kw.value) not in ("yaml.SafeLoader", "yaml.CSafeLoader"):
                    found.append(f"{where(node)}: {dotted}(Loader={ast.unparse(kw.value)})")
            if dotted.endswith("torch.load"):
                safe = [k for k in node.keywords if k.arg == "weights_only"
                        and isinstance(k.value, ast.Constant) and k.value.value is True]
                if not safe:
                    found.append(f"{where(node)}: torch.load without weights_only=True")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml" \
                and node.attr in UNSAFE_YAML:
            found.append(f"{where(node)}: yaml.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "yaml" \
                and any(a.name in UNSAFE_YAML for a in node.names):
            found.append(f"{where(node)}: from yaml import {', '.join(a.name for a in node.names)}")
    return found


def test_the_checker_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import yaml, os, subprocess, pickle, torch\nyaml.load(s)\nyaml.compose(s, Loader=yaml.Loader)\n"
                   "eval('1')\nexec('x=1')\nos.system('ls')\nsubprocess.run('ls', shell=True)\n"
                   "pickle.loads(b'')\ntorch.load('x.pt')\nf(trust_remote_code=True)\n"
                   "from yaml import FullLoader\n")
    found = "\n".join(violations(bad))
    for line, what in [(2, "yaml.load"), (3, "Loader=yaml.Loader"), (4, "eval()"), (5, "exec()"),
                       (6, "os.system()"), (7, "shell=..."), (8, "pickle.loads()"), (9, "weights_only=True"),
                       (10, "trust_remote_code=True"), (11, "from yaml import FullLoader")]:
        assert f"probe.py:{line}: " in found and what in found, (line, what, found)
    good = tmp_path / "good.py"
    good.write_text("import yaml, torch\nyaml.safe_load(s)\nyaml.compose(s, Loader=yaml.SafeLoader)\n"
                    "torch.load('x.pt', weights_only=True)\nf(trust_remote_code=m.trust)\nre.compile('x')\n")
    assert violations(good) == []


def test_no_eval_exec_shell_unsafe_yaml_pickle_or_hardcoded_remote_code_in_the_source():
    found = [v for path in python_files() for v in violations(path)]
    assert not found, "\n".join(found)


# ---- behaviour -----------------------------------------------------------------------------------------

class _Trap:
    """Unpickling this creates a marker file: proof that someone unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_spec(tmp_path: Path, model: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: sec\nmodels:\n  - {{alias: m, source: {model}}}\nprompts: [\"Once upon a time\"]\n"
                    "task: generate\ndecoding: {max_new_tokens: 2}\nexecution: {threads_per_rank: 1}\n")
    return spec


def test_a_pickle_next_to_safetensors_is_never_unpickled(tmp_path, tiny_llama):
    from lmsweep.runner.worker import run_element

    model = Path(shutil.copytree(tiny_llama, tmp_path / "model"))
    marker = tmp_path / "UNPICKLED"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    assert main(["plan", str(tiny_spec(tmp_path, model)), "--output-dir", str(tmp_path / "runs")]) == 0
    assert run_element(tmp_path / "runs" / "sec", 0) == 0
    assert not marker.exists()


def test_remote_code_added_after_planning_is_not_run(tmp_path, tiny_llama):
    """trust_remote_code reaches transformers only from the plan's model entry: code dropped into the
    model directory later (auto_map + a .py file) is refused at load, never imported."""
    from lmsweep.runner.worker import run_element

    model = Path(shutil.copytree(tiny_llama, tmp_path / "model"))
    assert main(["plan", str(tiny_spec(tmp_path, model)), "--output-dir", str(tmp_path / "runs")]) == 0
    marker = tmp_path / "IMPORTED"
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w')\nfrom transformers import LlamaForCausalLM as "
                                   "Model\n")
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.Model", "AutoConfig": "evil.Model"}
    (model / "config.json").write_text(json.dumps(cfg))
    plan = json.loads((tmp_path / "runs" / "sec" / "plan.json").read_text())
    assert plan["models"]["m"]["trust_remote_code"] is False
    try:
        run_element(tmp_path / "runs" / "sec", 0)
    except Exception as e:                       # transformers refuses; what matters is the marker
        assert "trust_remote_code" in str(e) or "custom code" in str(e), e
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {m}']",
                                 "!!python/object/new:os.system ['touch {m}']",
                                 "!!python/name:os.system"])
def test_yaml_python_tags_are_refused_and_run_nothing(tag, tmp_path, capsys):
    marker = tmp_path / "RAN"
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: " + tag.format(m=marker) + "\n")
    assert main(["validate", str(spec)]) == 2
    assert "malformed YAML" in capsys.readouterr().err
    assert not marker.exists()
