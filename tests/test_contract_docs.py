"""Meta-tests: every hook is documented and tested; CI runs exactly the README's test command."""
import re

from stbench import hookspecs

from conftest import REPO

HOOKS = [n for n in dir(hookspecs) if n.startswith("register_")]


def test_hooks_are_the_five_of_the_contract():
    assert sorted(HOOKS) == ["register_commands", "register_datasets", "register_metrics", "register_models",
                             "register_readers"]


def test_every_hook_is_documented():
    doc = (REPO / "docs" / "plugins.md").read_text()
    assert all(f"`{h}(" in doc for h in HOOKS)


def test_every_hook_is_exercised_by_a_test():
    tests = "".join(p.read_text() for p in (REPO / "tests").glob("test_*.py") if p.name != "test_contract_docs.py")
    source = tests + (REPO / "stbench" / "builtin.py").read_text()
    for h in HOOKS:
        assert f"def {h}(" in source, h


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci_lines[-1] == test_command
