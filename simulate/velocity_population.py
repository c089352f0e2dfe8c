"""A motor-cortex-like binned-count recording with a known 2-D velocity: the decoding test bed of
issue 29 (a recording of real-array density, 50 ms bins, imported like anyone's arrays).

Hand velocity v(t) = (vx, vy) is a smooth 2-D process (an Ornstein-Uhlenbeck velocity with a
`--tau` s time constant, smoothed by a 150 ms Gaussian), in cm/s. Each unit i has a preferred
direction d_i and a lead of 0-150 ms; its counts in 50 ms bins are Poisson with

    log rate_i(k) = b_i + g_i * d_i . v(k + lead_i) / v_rms + h_1 * n_i(k-1) + h_2 * n_i(k-2)

(cosine tuning with a speed gain; the history terms make it bursty then refractory); b_i puts the
unit's mean rate near `--rate` Hz. With `--neurons lif` the same tuning drives another kind of
neuron: leaky integrate-and-fire units at 1 ms with noise and a spike-triggered adaptation
current (time constant ADAPTATION_TAU), their spikes counted in the same bins. Their history
dependence is not the GLM's form above (a slow, graded adaptation and a 2 ms refractory
period), so a decoder that models that form is tested on neurons it was not written for. The
default gains (GAIN) make either task about as hard as a real motor-cortex array's (ridge test r
0.89 / 0.88 here; a Wiener filter 0.907 / 0.846 on a 171-unit recording of hand velocity).
Writes an array dictionary (`spikes` counts (units, bins), `hand_vx`, `hand_vy` per bin) and a
.truth.npz beside it (directions, gains, leads, rates), then:

    python simulate/velocity_population.py -o runs/vel/vel.npz          # 180 units, 15 min, ~10 s
    python simulate/velocity_population.py --neurons lif -o runs/lif/lif.npz    # ~1 min
    neuroformer prepare runs/vel/vel.npz --bin-size 0.05 --behavior hand_vx=0.05 --behavior hand_vy=0.05 -o runs/vel/vel.h5
    neuroformer decode --data runs/vel/vel.h5 --target hand_vx --target hand_vy -o runs/vel/REPORT
"""
import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from neuroformer.cli import count, positive_float, positive_int
from neuroformer.io import atomic_savez
from neuroformer.provenance import as_text

BIN = 0.05                       # s
HISTORY = (0.4, -0.6)            # log-rate change per spike 1 and 2 bins back
GAIN = {"glm": 0.15, "lif": 0.05}  # tuning gains that make decoding about as hard as a real array's
STEP = 0.001                     # s, integrate-and-fire time step
MEMBRANE_TAU, ADAPTATION_TAU = 0.02, 0.2      # s
ADAPTATION, NOISE, REFRACTORY = 0.15, 0.35, 0.002  # jump per spike, noise s.d. (threshold 1, reset 0), s


def velocity(rng, n_bins, tau):
    """(n_bins, 2) smooth velocity, cm/s: an OU process (time constant tau s), smoothed."""
    a = np.exp(-BIN / tau)
    noise = rng.normal(0.0, np.sqrt(1 - a * a), (n_bins, 2))
    v = np.zeros((n_bins, 2))
    for k in range(1, n_bins):
        v[k] = a * v[k - 1] + noise[k]
    return 10.0 * gaussian_filter1d(v, 0.15 / BIN, axis=0)


def population(rng, n_units, rate, gain):
    angle = rng.uniform(0, 2 * np.pi, n_units)
    return dict(direction=np.stack([np.cos(angle), np.sin(angle)], 1), gain=rng.uniform(gain / 3, gain, n_units),
                lead_bins=rng.integers(0, 4, n_units), target_rate=rate * rng.lognormal(0.0, 0.4, n_units))


def tuning_drive(v, pop):
    """(bins, units) each unit's cosine-tuned drive: its gain times the velocity `lead_bins` ahead
    (in units of its rms) along its preferred direction."""
    unit_v = v / np.sqrt((v ** 2).sum(1).mean())
    ahead = np.minimum(np.arange(len(v))[:, None] + pop["lead_bins"][None], len(v) - 1)   # (bins, units)
    return pop["gain"] * np.einsum("kuc,uc->ku", unit_v[ahead], pop["direction"])


def simulate(rng, v, pop):
    """Counts (units, bins): Poisson per bin given the tuning drive and the unit's last two bins."""
    n_bins, n_units = len(v), len(pop["gain"])
    drive = tuning_drive(v, pop)
    mean_rate = pop["target_rate"] * BIN
    # the baseline that gives each unit its target mean rate without history (lognormal mean of the drive)
    base = np.log(mean_rate) - np.log(np.exp(drive).mean(0))
    counts = np.zeros((n_bins, n_units), dtype=np.int64)
    for k in range(n_bins):
        log_rate = base + drive[k]
        for lag, h in enumerate(HISTORY, start=1):
            if k >= lag:
                log_rate = log_rate + h * np.minimum(counts[k - lag], 3)
        counts[k] = rng.poisson(np.exp(log_rate))
    return counts.T


def integrate_and_fire(rng, v, pop, calibration_s=20.0):
    """Counts (units, bins) of adaptive leaky integrate-and-fire units driven by the tuning drive;
    each unit's constant input is first set (by bisection on `calibration_s` s of the drive) so
    its mean rate is near its target rate."""
    drive, per_bin = tuning_drive(v, pop), int(round(BIN / STEP))
    low, high = np.full(len(pop["gain"]), -1.0), np.full(len(pop["gain"]), 4.0)
    calibration = drive[:int(calibration_s / BIN)]
    for _ in range(12):
        middle = (low + high) / 2
        too_fast = _lif(rng, calibration, middle, per_bin).sum(0) / calibration_s > pop["target_rate"]
        low, high = np.where(too_fast, low, middle), np.where(too_fast, middle, high)
    return _lif(rng, drive, (low + high) / 2, per_bin).T


def _lif(rng, drive, bias, per_bin):
    """(bins, units) counts of the units with constant input `bias` plus `drive` (per bin)."""
    n_bins, n_units = drive.shape
    leak, decay = STEP / MEMBRANE_TAU, np.exp(-STEP / ADAPTATION_TAU)
    noise = NOISE * np.sqrt(2 * leak)
    voltage, adaptation = rng.uniform(0, 1, n_units), np.zeros(n_units)
    silent = np.zeros(n_units)                       # refractory time left, s
    counts = np.zeros((n_bins, n_units), dtype=np.int64)
    for k in range(n_bins):
        kicks = rng.normal(0.0, noise, (per_bin, n_units))
        current = bias + drive[k]
        for j in range(per_bin):
            active = silent <= 0
            voltage += active * (leak * (current - adaptation - voltage) + kicks[j])
            spiked = voltage >= 1.0
            voltage[spiked] = 0.0
            adaptation = adaptation * decay + ADAPTATION * spiked
            silent = np.where(spiked, REFRACTORY, silent - STEP)
            counts[k] += spiked
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="array dictionary (.npz)")
    parser.add_argument("--units", type=positive_int, default=180)
    parser.add_argument("--minutes", type=positive_float, default=15.0)
    parser.add_argument("--rate", type=positive_float, default=18.0, help="typical mean rate per unit (Hz)")
    parser.add_argument("--tau", type=positive_float, default=0.5, help="velocity time constant (s)")
    parser.add_argument("--gain", type=positive_float,
                        help="largest tuning gain (log-rate, or lif: input, per rms velocity; default glm 0.15, lif "
                             "0.05: ridge r ~0.88 for both); gains are uniform in [gain/3, gain]")
    parser.add_argument("--neurons", choices=("glm", "lif"), default="glm",
                        help="Poisson counts with the GLM's history terms, or adaptive integrate-and-fire units")
    parser.add_argument("--seed", type=count, default=0)
    args = parser.parse_args()
    if args.output.suffix != ".npz":
        parser.error(f"-o {args.output}: the array dictionary is written as .npz")
    args.gain = args.gain or GAIN[args.neurons]
    rng = np.random.default_rng(args.seed)
    n_bins = int(round(args.minutes * 60 / BIN))
    v = velocity(rng, n_bins, args.tau)
    pop = population(rng, args.units, args.rate, args.gain)
    counts = (integrate_and_fire if args.neurons == "lif" else simulate)(rng, v, pop)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(args.output, spikes=counts, hand_vx=v[:, 0].astype(np.float32), hand_vy=v[:, 1].astype(np.float32))
    atomic_savez(args.output.with_suffix(".truth.npz"), provenance=as_text(vars(args), args.seed), **pop,
                 bin_size=BIN, **(dict(history=np.array(HISTORY)) if args.neurons == "glm" else dict(
                     membrane_tau=MEMBRANE_TAU, adaptation_tau=ADAPTATION_TAU, adaptation=ADAPTATION, noise=NOISE,
                     refractory=REFRACTORY)))
    rate = counts.sum(1) / (n_bins * BIN)
    print(f"wrote {args.output}: {args.units} units, {n_bins} bins of {BIN} s, "
          f"median rate {np.median(rate):.1f} Hz, velocity rms {np.sqrt((v ** 2).sum(1).mean()):.1f} cm/s")


if __name__ == "__main__":
    main()
