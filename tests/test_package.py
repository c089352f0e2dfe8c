"""The package's structure: which modules a module loads (lower layers never import higher ones),
and the public API of `neuroformer`, imported lazily."""
import importlib
import subprocess
import sys
import types

import pytest

import neuroformer

TRANSFORMER = ("neuroformer.model", "neuroformer.nn", "neuroformer.training", "neuroformer.backbones",
               "neuroformer.assembly", "neuroformer.checkpoints", "neuroformer.rollouts")


def loaded_modules(module):
    """The neuroformer modules in sys.modules after importing `module` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('neuroformer')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module,forbidden", [
    ("neuroformer.glm", TRANSFORMER),                 # the baseline stands without the transformer
    ("neuroformer.simulations", TRANSFORMER),
    ("neuroformer.checkpoints", ("neuroformer.training", "neuroformer.rollouts", "neuroformer.evaluate")),
    ("neuroformer.data.windows", TRANSFORMER + ("neuroformer.config", "neuroformer.glm")),
])
def test_module_does_not_load_higher_layers(module, forbidden):
    loaded = loaded_modules(module)
    assert module in loaded
    assert not loaded & set(forbidden), sorted(loaded & set(forbidden))


def test_importing_the_package_loads_no_submodule():
    assert loaded_modules("neuroformer") == {"neuroformer"}


@pytest.mark.parametrize("name", neuroformer.__all__)
def test_public_name_resolves_to_its_definition(name):
    value = getattr(neuroformer, name)
    assert not isinstance(value, types.ModuleType)        # not a submodule of the same name
    assert value.__name__ == name and value.__module__.startswith("neuroformer.")
    assert getattr(importlib.import_module(value.__module__), name) is value


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        neuroformer.no_such_name
