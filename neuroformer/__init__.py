"""Neuroformer: a multimodal generative simulator of neural population activity.

The public API is below. Each name is imported on first use (PEP 562), so importing one part
(say the GLM baseline, `neuroformer.glm`) does not load the others (the transformer).
"""
import importlib

__version__ = "0.1.0"

_HOMES = {
    # data: import, open, check, summarise and synthesise recordings
    "prepare": "data.importers", "VideoSpec": "data.importers",
    "open_recording": "data.recording", "validate_file": "data.validate", "summarize": "data.info",
    "write_synthetic": "data.synthetic", "SyntheticConfig": "data.synthetic",
    # the model, its training and checkpoints
    "load_config": "config", "Neuroformer": "model", "Sampling": "generation",
    "train": "training", "RunOptions": "training", "load_model": "checkpoints",
    # simulation and scoring
    "simulate": "rollouts", "SimulationOptions": "rollouts",
    "Simulation": "simulations", "save_simulation": "simulations", "load_simulation": "simulations",
    "save_nwb": "simulations", "evaluate_simulation": "evaluate", "score": "scoring",
    "extract_connectivity": "connectivity", "decode": "decoding",
    # the Poisson GLM baseline
    "PoissonGLM": "glm", "GLMConfig": "glm",
    "InputError": "errors",
}

__all__ = sorted(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
