"""Configs: YAML mapped onto dataclasses, checked key by key (unknown keys, wrong types, NaN or
infinite numbers and values out of a field's declared range are errors naming the key). One
width key (`model.width`); every other size is derived from it.
"""
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InputError


MAX_ADAPTATION = 3600.0     # s: window.adaptation reads frames of the presentation up to this long ago


def ranged(default, test, wanted):
    """A dataclass field whose values must pass `test` (`wanted` says how, e.g. "> 0")."""
    return field(default=default, metadata={"check": (test, wanted)})


def positive(default):
    return ranged(default, lambda v: v > 0, "> 0")


def at_least(low, default):
    return ranged(default, lambda v: v >= low, f">= {low}")


def probability(default):
    return ranged(default, lambda v: 0 <= v < 1, "in [0, 1)")


@dataclass
class GazeConfig:
    x: str = ""                        # behaviour variable of the horizontal gaze (e.g. eye.phi; > 0: right); "" = none
    y: str = ""                        # of the vertical gaze (e.g. eye.theta; > 0: towards higher rows)
    pixels_per_unit: float = positive(1.0)  # frame pixels per unit of them (pixels per degree)


@dataclass
class WindowConfig:
    current: float = positive(0.05)     # s, predicted window
    history: float = at_least(0, 0.05)  # s, past spikes before it
    frames: float = at_least(0, 0.15)   # s of movie frames ending with the current window; 0 = no stimulus
    behavior: float = at_least(0, 0.05)  # s of behaviour samples ending with the current window
    target_lag: float = at_least(0, 0.0)  # s the behaviour *targets* are taken before that: decoded from the
                                          # spikes on both sides of them (a response follows its cause after a latency)
    dt_res: float = positive(0.001)     # s, resolution of the gap classes (at most `current`)
    calcium: float = at_least(0, 0.0)   # s of ΔF/F frames ending with the current window as calcium tokens
                                        # (one per ROI and imaging frame), read by the behaviour heads only;
                                        # 0 = none; the recording needs traces (docs/decode.md)
    gaze: GazeConfig = field(default_factory=GazeConfig)  # given: frames in eye-centred coordinates, each
                                        # shifted by minus the gaze at its onset (data/gaze.py)
    adaptation: float = ranged(0.0, lambda v: v == 0 or 1 <= v <= MAX_ADAPTATION,
                               f"0 (off) or in [1, {MAX_ADAPTATION:g}] s")
                                        # s of frames over which the GLM's stimulus filter adapts: its
                                        # output is standardised by its running mean and s.d. over the
                                        # presentation so far (exponential, time constant half this span,
                                        # shrunk towards learned per-unit statistics with as much weight);
                                        # 0 = a fixed filter (model.stimulus_features needed)


@dataclass
class Variable:
    predict: bool = False              # a target of the behaviour heads (never also an input)
    objective: str = "regression"      # regression | classification
    n_classes: int = at_least(0, 0)    # classification only
    channels: int = at_least(1, 1)     # >1: a multichannel input signal, values (T, channels); one token
                                       # per channel and sample, with a channel embedding
    reads_frames: bool = True          # a target's read-out sees the movie; false: it reads the spikes,
                                       # behaviour inputs and calcium tokens only (a variable the movie does
                                       # not cause, such as running speed, cannot then be learned from the
                                       # movie's identity); without frames it changes nothing


@dataclass
class Modality:
    variables: dict[str, Variable] = field(default_factory=dict)


@dataclass
class BackboneConfig:
    name: str = "patch"                # patch | conv3d | resnet18
    weights: str | None = None         # resnet18: a state_dict file; default torchvision's cache
    patch: int = at_least(1, 8)        # patch: pixels per side; conv3d: spatial stride
    frozen: bool = True                # resnet18: features computed once and cached
    pool: int = at_least(1, 1)         # resnet18: average-pool the feature grid by pool x pool

    @property
    def tag(self):
        """Name of the cached features: backbone and pooling."""
        return self.name + (f"-pool{self.pool}" if self.pool > 1 else "")


@dataclass
class ModelConfig:
    width: int = at_least(4, 64)
    heads: int = at_least(1, 4)
    history_layers: int = at_least(0, 1)
    visual_layers: int = at_least(0, 1)
    behavior_layers: int = at_least(0, 1)
    decoder_layers: int = at_least(1, 2)
    mlp_ratio: int = at_least(1, 4)
    dropout: float = probability(0.1)
    frame_dropout: float = probability(0.0)  # fraction of training windows whose frames are hidden (modality
                                             # dropout): the spikes must carry what they can without the movie
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    contrastive_dim: int = at_least(0, 0)  # 0: the width
    latents: int = at_least(0, 0)      # >0: history spikes compressed into this many latent tokens
                                       # (cross-attention, then the history layers on the latents):
                                       # cost linear in spikes; 0: every history spike is a memory token
    point_process: bool = False        # spike heads as a discrete-time point process whose per-unit
                                       # log rate holds a GLM (baseline, window drive, coupling to past
                                       # spikes) that the transformer's outputs modulate (docs/design.md)
    coupling_lag: float = positive(0.05)   # s of past spikes the coupling term filters (point_process)
    coupling_bases: int = at_least(1, 5)   # raised-cosine lag bases of the coupling filters
    coupling_bound: float = at_least(0, 3.0)    # point_process: the coupling input to a unit's log rate is
                                       # softly bounded to +-this (nats; 0: unbounded), and so is each of
    correction_bound: float = at_least(0, 1.0)  # the transformer's corrections of it: a closed-loop rollout
                                       # feeds histories never seen in training, and unbounded
                                       # self-excitation turns them into a runaway (a unit firing every bin)
    wiener: bool = True                # regression targets: a linear read-out of the binned counts inside
                                       # the model, fitted by ridge on the training split, then fixed
    calcium_latents: int = at_least(1, 16)  # latent tokens the calcium tokens are read into (window.calcium)
    stimulus_features: int = at_least(0, 0)  # >0 (point_process, with frames): a linear stimulus filter in
                                       # the GLM, per unit: these many shared features per patch, weighted
                                       # by the unit's spatial map, filtered over the time since frame onset


@dataclass
class LossConfig:
    spikes: float = at_least(0, 1.0)
    contrastive: float = at_least(0, 0.1)
    behavior: float = at_least(0, 1.0)
    glm_l2: float = at_least(0, 0.0)    # point_process: ridge penalty |w|^2 / 2 per spike on the GLM's filters


@dataclass
class TrainConfig:
    batch_size: int = at_least(1, 32)
    lr: float = positive(3e-4)
    weight_decay: float = at_least(0, 0.01)
    warmup_steps: int = at_least(0, 100)
    max_steps: int = at_least(1, 2000)
    grad_clip: float = positive(1.0)
    eval_every: int = at_least(1, 250)
    eval_batches: int = at_least(1, 50)
    checkpoint_every: int = at_least(1, 250)
    num_workers: int = at_least(0, 0)
    glm_lr: float = positive(0.01)     # learning rate of the GLM inside a point-process model (baseline
                                       # rates, coupling, stimulus and behaviour filters): few, well-conditioned parameters
    glm_steps: int = at_least(0, 0)    # point_process: the first steps fit only that GLM, the transformer
                                       # bypassed (fast); then the transformer starts where a GLM ends and
                                       # the GLM is refined at `lr`; best.pt is kept from either phase; a run
                                       # cut shorter than them (--max-steps) fits the GLM for half its steps


@dataclass
class Config:
    window: WindowConfig = field(default_factory=WindowConfig)
    modalities: dict[str, Modality] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def variables(self, predict):
        """Behaviour variables used as inputs (predict=False) or as targets (predict=True)."""
        return [name for m in self.modalities.values() for name, v in m.variables.items() if v.predict == predict]

    def channels(self):
        """Channels of every input variable (1 for a scalar)."""
        return {name: v.channels for m in self.modalities.values() for name, v in m.variables.items()
                if not v.predict}

    def to_dict(self):
        return dataclasses.asdict(self)


def _build(cls, raw, where, source):
    """Instantiate dataclass `cls` from a mapping, checking keys and types recursively."""
    if not isinstance(raw, dict):
        raise InputError(source, (where or "config", f"expected a mapping, got {type(raw).__name__}"))
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise InputError(source, [(f"{where}{k}", f"unknown key (allowed: {sorted(hints)})") for k in unknown])
    values = {k: _value(hints[k], v, f"{where}{k}", source) for k, v in raw.items()}
    for f in dataclasses.fields(cls):
        test, wanted = f.metadata.get("check", (None, None))
        if f.name in values and test and not test(values[f.name]):
            raise InputError(source, (f"{where}{f.name}", f"must be {wanted}, got {values[f.name]!r}"))
    return cls(**values)


def _value(hint, value, where, source):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where + ".", source)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(source, (where, f"expected a mapping, got {type(value).__name__}"))
        return {str(k): _value(args[1], v, f"{where}.{k}", source) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _value(next(a for a in args if a is not type(None)), value, where, source)
    ok = isinstance(value, hint) and not (hint in (int, float) and isinstance(value, bool))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise InputError(source, (where, f"expected {hint.__name__}, got {type(value).__name__} {value!r}"))
    if hint is float and not math.isfinite(value):
        raise InputError(source, (where, f"must be a finite number, got {value!r}"))
    return value


def config_from_dict(raw, source="config"):
    cfg = _build(Config, raw or {}, "", source)
    _check(cfg, source)
    return cfg


def read_yaml(path):
    """The YAML document in `path`; an unreadable file (missing, binary, malformed) is an InputError."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(path, ("config", f"cannot read YAML ({reason})")) from None


def load_config(path):
    return config_from_dict(read_yaml(path), path)


def _check(cfg, source):
    m = cfg.model
    if cfg.window.dt_res > cfg.window.current:
        raise InputError(source, ("window.dt_res", f"must be at most window.current ({cfg.window.current}), "
                                                   f"got {cfg.window.dt_res}"))
    if m.point_process and m.coupling_lag > cfg.window.history:
        raise InputError(source, ("model.coupling_lag", f"must be at most window.history ({cfg.window.history}), "
                                                        f"got {m.coupling_lag}"))
    if (cfg.window.gaze.x or cfg.window.gaze.y) and (cfg.window.frames == 0 or
                                                     (m.backbone.name == "resnet18" and m.backbone.frozen)):
        raise InputError(source, ("window.gaze", "shifts frames: needs window.frames > 0 and pixels in the model "
                                                 "(not the cached features of a frozen resnet18)"))
    if m.stimulus_features and not (m.point_process and cfg.window.frames > 0):
        raise InputError(source, ("model.stimulus_features", "needs point_process: true and window.frames > 0"))
    if cfg.window.adaptation and not m.stimulus_features:
        raise InputError(source, ("window.adaptation", "adapts the GLM's stimulus filter: needs model.stimulus_features > 0"))
    if cfg.train.glm_steps and not m.point_process:
        raise InputError(source, ("train.glm_steps", "needs model.point_process: true (there is no GLM to fit)"))
    if m.width % m.heads or (m.width // m.heads) % 4:
        raise InputError(source, ("model.heads", f"width {m.width} must split into heads whose size is a multiple of 4"))
    if m.backbone.name not in ("patch", "conv3d", "resnet18"):
        raise InputError(source, ("model.backbone.name", f"unknown backbone {m.backbone.name!r} (patch, conv3d, resnet18)"))
    for mname, modality in cfg.modalities.items():
        for vname, v in modality.variables.items():
            if v.objective not in ("regression", "classification"):
                raise InputError(source, (f"modalities.{mname}.variables.{vname}.objective",
                                          f"unknown objective {v.objective!r} (regression, classification)"))
            if not (v.reads_frames or v.predict):
                raise InputError(source, (f"modalities.{mname}.variables.{vname}.reads_frames",
                                          "false is for a target's read-out (predict: true); an input has none"))
            if v.channels < 1 or (v.channels > 1 and v.predict):
                raise InputError(source, (f"modalities.{mname}.variables.{vname}.channels",
                                          "must be >= 1, and multichannel signals are inputs only (predict: false)"))
            if v.objective == "classification" and v.n_classes < 2:
                raise InputError(source, (f"modalities.{mname}.variables.{vname}.n_classes",
                                          "classification needs n_classes >= 2"))
