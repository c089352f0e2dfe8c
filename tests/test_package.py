"""The package's structure: which modules a module loads (lower layers never import higher ones)."""
import subprocess
import sys

import pytest

TRANSFORMER = ("neuroformer.model", "neuroformer.nn", "neuroformer.train", "neuroformer.backbones",
               "neuroformer.assembly", "neuroformer.checkpoints", "neuroformer.simulate")


def loaded_modules(module):
    """The neuroformer modules in sys.modules after importing `module` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('neuroformer')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module,forbidden", [
    ("neuroformer.glm", TRANSFORMER),                 # the baseline stands without the transformer
    ("neuroformer.simulations", TRANSFORMER),
    ("neuroformer.checkpoints", ("neuroformer.train", "neuroformer.simulate", "neuroformer.evaluate")),
    ("neuroformer.data.windows", TRANSFORMER + ("neuroformer.config", "neuroformer.glm")),
])
def test_module_does_not_load_higher_layers(module, forbidden):
    loaded = loaded_modules(module)
    assert module in loaded
    assert not loaded & set(forbidden), sorted(loaded & set(forbidden))
