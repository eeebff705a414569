"""Packaging stays consistent: environment.yml vs pyproject, console script, the two commands."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {_name(d) for d in project["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "graphop"
    assert "conda-forge" in env["channels"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(d.startswith("python=3.11") for d in conda)
    # the pip section installs the package itself with the extras the Makefile uses
    assert "-e .[dev,viz]" in pip
    # the torch pin is the same one the Makefile installs
    make = (ROOT / "Makefile").read_text()
    pin = re.search(r"TORCH\s*\?=\s*(\S+)", make).group(1)
    assert pin in pip
    # every conda package is a pyproject dependency too (conda only pre-installs binaries)
    for d in conda:
        if d.startswith(("python", "pip")):
            continue
        assert _name(d.split("=")[0]) in deps, f"{d} is in environment.yml but not in pyproject"
    for extra in ("dev", "scatter", "viz"):
        assert extra in project["optional-dependencies"]


def test_console_script_and_module_entry():
    out = subprocess.run([sys.executable, "-m", "graphop", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "usage: graphop" in out
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["graphop"] == "graphop.cli:main"


def test_readme_first_screen_shows_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "make demo" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()
