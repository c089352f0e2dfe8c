"""Configs that fit a recording: a shipped template (neuroformer/configs/*.yaml) whose behaviour
variables are the recording's own and whose `window.frames` follows whether it has a movie.

Rules (docs/train.md, "Configs that fit the recording"):
- a template that reads behaviour inputs (demo, published, periodic) gets every variable of the
  recording as an input (a 2-D one with its channels); one that reads none (decoding, circuit)
  gets none;
- a variable given in `predict` is a target (predict: true), never also an input; it is a
  classification when it holds class labels (`recording.class_count`), else a regression;
- `window.frames` is 0 when the recording has no movie, the template's value when it has one;
  without a movie there is no stimulus filter (`model.stimulus_features`, `window.adaptation`)
  and no eye-centred frames (`window.gaze`);
- `window.gaze` is kept when the recording has its variables (1-D, shifts within the frame at
  the template's scale) and none is a target (frames shifted by a decoded variable would show
  the model its answer);
- `window.adaptation` is at least the span that holds `MIN_ADAPTATION_FRAMES` statistics
  frames of the recording's slowest movie;
- `calcium` > 0 (`--calcium-tokens`) sets `window.calcium`: the behaviour heads read the last
  `calcium` s of the recording's ΔF/F traces as calcium tokens (refused without traces);
- a template without latents reads the history through `LATENTS` latent tokens (`model.latents`)
  when the recording's mean spike rate would put more than `LATENT_ABOVE` spikes in a window's
  history: attention over every history spike costs their square, latents cost them linearly.
"""
from pathlib import Path

import yaml

from .config import config_from_dict, load_config
from .data.gaze import Gaze
from .data.recording import (behavior_values, behavior_variables, class_count, movie_frame_dataset, open_recording,
                             resolve_variable)
from .data.windows import least_adaptation_span
from .errors import InputError
from .io import atomic_path

LATENT_ABOVE = 512    # expected history spikes per window beyond which the history goes through latents
LATENTS = 32

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def templates():
    """Names of the shipped configs a config can be derived from."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def template_path(name):
    """The YAML file of shipped config `name`."""
    if name not in templates():
        raise InputError("--template", ("template", f"unknown {name!r} (one of {', '.join(templates())})"))
    return CONFIG_DIR / f"{name}.yaml"


def resolve_names(data, names, path):
    """Full "group.field" names of `names` in recording `data`; a name it lacks is an InputError
    listing the variables it has."""
    try:
        return [resolve_variable(data, n) for n in names]
    except KeyError as err:
        raise InputError(path, ("behavior", err.args[0])) from None


def variable_entry(data, name, predict):
    """The config entry of behaviour variable `name`: a target's objective, an input's channels."""
    values = behavior_values(data, name)
    if predict:
        k = class_count(values)
        return {"predict": True, "objective": "classification", "n_classes": k} if k else {"predict": True}
    return {"predict": False} | ({"channels": values.shape[1]} if values.ndim == 2 else {})


def reads_behavior(raw):
    """Whether a raw config has behaviour inputs."""
    return any(not v.get("predict", False) for m in (raw.get("modalities") or {}).values()
               for v in (m.get("variables") or {}).values())


def _gaze_applies(data, gaze, targets, path):
    """Whether the template's `window.gaze` fits the recording: its variables there, 1-D, not
    targets, their shifts within the frame (`Gaze.check`)."""
    if not gaze:
        return False
    try:
        Gaze(**gaze).check(data, movie_frame_dataset(data).shape[1:3], path, targets)
    except InputError:
        return False
    return True


def derive_raw(data_path, template="demo", predict=(), calcium=0.0):
    """The template's YAML mapping fitted to the recording at `data_path` (see the module rules)."""
    raw = yaml.safe_load(template_path(template).read_text()) or {}
    with open_recording(data_path) as data:
        targets = resolve_names(data, predict, data_path)
        inputs = [n for n in behavior_variables(data) if n not in targets] if reads_behavior(raw) else []
        variables = ({n: variable_entry(data, n, False) for n in inputs}
                     | {n: variable_entry(data, n, True) for n in targets})
        has_movie = "movies" in data.keys()
        least_span = least_adaptation_span(data) if has_movie else 0.0
        gaze_applies = has_movie and _gaze_applies(data, (raw.get("window") or {}).get("gaze"), targets, data_path)
        if calcium > 0 and "calcium" not in data.keys():
            raise InputError(data_path, ("calcium", "--calcium-tokens reads ΔF/F traces; the recording has none"))
        spikes_per_s = len(data.spikes.timestamps) / float((data.domain.end - data.domain.start).sum())
    window = raw.pop("window", {}) | ({} if has_movie else {"frames": 0}) | ({"calcium": calcium} if calcium else {})
    raw.pop("modalities", None)
    model = raw.setdefault("model", {})
    if not gaze_applies:
        window.pop("gaze", None)
    if not has_movie:
        model.pop("stimulus_features", None)
        window.pop("adaptation", None)
    elif window.get("adaptation"):
        window["adaptation"] = max(window["adaptation"], least_span)
    if not model.get("latents") and spikes_per_s * window.get("history", 0.0) > LATENT_ABOVE:
        model["latents"] = LATENTS
    return {"window": window, "modalities": {"behavior": {"variables": variables}} if variables else {}, **raw}


def derive_config(data_path, template="demo", predict=(), calcium=0.0):
    """`derive_raw` as a checked Config."""
    return config_from_dict(derive_raw(data_path, template, predict, calcium), f"{template} config for {data_path}")


def config_for(data_path, config=None, template="demo", predict=(), calcium=0.0):
    """The config at `config`, or without one the template fitted to the recording; `calcium`
    (the derived config's `window.calcium`) goes with the latter only."""
    if config and calcium:
        raise InputError("--calcium-tokens", ("calcium tokens", f"set window.calcium in {config} instead"))
    return load_config(config) if config else derive_config(data_path, template, predict, calcium)


def write_config(data_path, out, template="demo", predict=(), calcium=0.0):
    """Write the template fitted to the recording as YAML at `out` (checked first); returns its Config."""
    raw = derive_raw(data_path, template, predict, calcium)
    cfg = config_from_dict(raw, out)
    header = (f"# `neuroformer config` from the {template} template for {Path(data_path).name}: its behaviour\n"
              "# variables (predict: true = a decoded target) and window.frames 0 when it has no movie"
              + (f";\n# window.calcium: the last {calcium:g} s of ΔF/F as calcium tokens.\n" if calcium else ".\n"))
    with atomic_path(out) as tmp:
        Path(tmp).write_text(header + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    return cfg


def describe(cfg):
    """One line on what a config reads: its frames, behaviour inputs and targets."""
    return (f"window.frames {cfg.window.frames:g}; inputs {', '.join(cfg.variables(False)) or 'none'}; "
            f"targets {', '.join(cfg.variables(True)) or 'none'}"
            + (f"; calcium tokens over {cfg.window.calcium:g} s" if cfg.window.calcium else ""))
