import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).parents[1] / "scripts"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def load_script():
    """Import a recipe from ``scripts/`` (or a file of another top-level folder, e.g. ``benchmarks``) as a
    module: recipes and benchmarks are files, not package modules."""

    def load(name: str, folder: str = "scripts"):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS.parent / folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
