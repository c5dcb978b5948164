"""Repository contract: README's two set-up commands, CI running the test command as written."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    head = text.split("---", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", head, flags=re.S)


def test_readme_opens_with_exactly_two_commands():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert all("\n" not in c for c in cmds)
    assert "snakemake --cores all" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_readme_commands_make_a_virtual_environment_with_the_cpu_torch():
    # PEP 668 systems (Debian 12, Ubuntu 24.04) refuse global installs: both commands work in a
    # venv of their own; torch's CPU build is named before the project (a plain `torch` would
    # pull a multi-GB CUDA build)
    for cmd in readme_commands():
        assert cmd.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
        assert cmd.index('"torch==2.13.0"') < cmd.index("-e ")


def test_environment_matches_pyproject():
    """environment.yml and workflow/envs/vtn.yaml list the same packages as pyproject.toml."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in deps}
    aliases = {"torch": "pytorch"}
    for env_file in (ROOT / "environment.yml", ROOT / "workflow" / "envs" / "vtn.yaml"):
        env = yaml.safe_load(env_file.read_text())
        listed = set()
        for dep in env["dependencies"]:
            items = dep["pip"] if isinstance(dep, dict) else [dep]
            for item in items:
                listed.add(re.split(r"[<>=!\[ ]", item)[0].lower())
        missing = {aliases.get(n, n) for n in names} - listed
        if env_file.name == "vtn.yaml":
            missing -= {"snakemake"}  # the rules' environment does not need snakemake itself
        assert not missing, f"{env_file.name} lacks {sorted(missing)}"
