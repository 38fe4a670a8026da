"""environment.yml mirrors pyproject.toml; the torch pin matches constraints.txt."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip = [p for p in pip if not p.startswith("-")]
    pinned = {_name(p): p for p in pip}
    pyproject = {_name(r): r for r in wanted}
    assert set(pinned) == set(pyproject)
    for name, req in pyproject.items():
        if name != "torch":
            assert pinned[name].replace(" ", "") == req.replace(" ", ""), name
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=" + project["requires-python"].removeprefix(">=")


def test_torch_pin_is_the_same_everywhere():
    constraints = (ROOT / "constraints.txt").read_text()
    pin = re.search(r"^torch==([\d.]+)$", constraints, re.M).group(1)
    assert f"torch=={pin}" in (ROOT / "environment.yml").read_text()
    requirement = next(r for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                       if r.startswith("torch"))
    lower = re.search(r">=([\d.]+)", requirement).group(1)
    assert tuple(map(int, pin.split("."))) >= tuple(map(int, lower.split(".")))


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"Run the tests:?\s*\n+```(?:bash|sh)?\n(.+?)\n```", readme).group(1).strip()
    assert command == "make test"
    last = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last.strip() == command
