"""The conda environment of the rules agrees with pyproject.toml, and every rule uses it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
ENV = ROOT / "envs" / "aaclip.yaml"
RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_requirements() -> tuple[dict, list[str]]:
    env = yaml.safe_load(ENV.read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    reqs = {}
    for line in pip:
        if line.startswith("-e "):
            continue
        req = Requirement(line)
        reqs[_canonical(req.name)] = req.specifier
    return reqs, conda


def _pyproject_requirements() -> tuple[dict, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        reqs[_canonical(req.name)] = req.specifier
    return reqs, project["requires-python"]


def test_env_pip_packages_equal_pyproject_dependencies_and_pins():
    env, _ = _env_requirements()
    project, _ = _pyproject_requirements()
    assert sorted(env) == sorted(project)
    for name, spec in project.items():
        assert env[name] == spec, f"{name}: envs/aaclip.yaml pins {env[name]}, pyproject.toml {spec}"


def test_env_python_satisfies_requires_python_and_installs_the_package():
    _, conda = _env_requirements()
    _, requires_python = _pyproject_requirements()
    python = next(d for d in conda if d.startswith("python"))
    version = python.split("=", 1)[1]
    assert version in SpecifierSet(requires_python)
    pip = next(d["pip"] for d in yaml.safe_load(ENV.read_text())["dependencies"] if isinstance(d, dict))
    editable = [line.split(None, 1)[1] for line in pip if line.startswith("-e ")]
    assert editable and (ENV.parent / editable[0] / "pyproject.toml").is_file()


def test_every_rule_declares_the_conda_env():
    rules = 0
    for path in RULE_FILES:
        text = path.read_text()
        # Split at rule headers (named rules and the loop-generated `rule:` blocks).
        blocks = re.split(r"^\s*rule(?: \w+)?:\s*$", text, flags=re.MULTILINE)[1:]
        for block in blocks:
            rules += 1
            if re.search(r"^\s+(script|shell):", block, flags=re.MULTILINE) is None:
                continue  # `rule all`: no action, no environment
            match = re.search(r'^\s+conda:\s*\n\s+"([^"]+)"', block, flags=re.MULTILINE)
            assert match, f"{path.name}: a rule without conda:\n{block[:200]}"
            assert (path.parent / match.group(1)).resolve() == ENV.resolve()
    assert rules >= 14
