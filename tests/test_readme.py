"""The README's Python examples run as written, and its commands name real options."""

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index):
    exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index}", "exec"), {})


def test_readme_has_examples_and_two_commands():
    assert len(PYTHON_BLOCKS) >= 2
    assert README.count("python3 -m venv .venv") == 2


def test_training_commands_name_real_configs():
    from train import configs

    names = set(re.findall(r"--config (\w+)", README))
    assert names
    for name in names:
        assert configs.get_config(name) is not None
