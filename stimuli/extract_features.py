"""Compute and cache a visual backbone's features for a recording's movie or a video file, and
draw example frames beside their feature maps (first principal component over channels).

    python stimuli/extract_features.py --data REC.h5 --backbone resnet18 -o figures/
    python stimuli/extract_features.py --video movie.mp4 [--fps 30] --backbone resnet18 -o figures/
    python stimuli/extract_features.py --quick -o /tmp/x        # a synthetic movie; what the test runs

For a recording the cache is `REC.<backbone>.features.h5` (what training reads for a frozen
backbone); for a video, `VIDEO.<backbone>.features.npz`. Full run on the demo recording's
600 frames with resnet18: ~10 s on 2 cores.
"""
import argparse
from pathlib import Path

import h5py
import numpy as np
import torch

from neuroformer.backbones import make_backbone
from neuroformer.config import BackboneConfig
from neuroformer.data.importers import read_video
from neuroformer.data.recording import movie_frame_dataset, open_recording
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.features import compute_features
from neuroformer.io import atomic_savez


def video_features(video, cfg):
    frames, _ = read_video(video)
    torch.manual_seed(0)
    backbone = make_backbone(cfg, frames.shape[1:3]).eval()
    with torch.no_grad():
        feats = torch.cat([backbone(torch.from_numpy(frames[a:a + 64]).unsqueeze(1))[:, 0]
                           for a in range(0, len(frames), 64)]).numpy()
    out = atomic_savez(Path(video).with_suffix(f".{cfg.name}.features.npz"), features=feats.astype(np.float16),
                       grid=np.array(backbone.grid))
    return frames, feats, tuple(backbone.grid), out


def recording_features(recording, cfg):
    out = compute_features(recording, cfg)
    data = open_recording(recording)
    frames = np.asarray(movie_frame_dataset(data)[:])
    data.file.close()
    with h5py.File(out, "r") as f:
        return frames, f["features"][:].astype(np.float32), tuple(f.attrs["grid"]), out


def figure(frames, feats, grid, png, n=4):
    from neuroformer.plots import subplots

    pick = np.linspace(0, len(frames) - 1, n).astype(int)
    flat = feats.reshape(-1, feats.shape[-1])
    flat = flat - flat.mean(0)
    component = np.linalg.svd(flat[:: max(1, len(flat) // 20000)], full_matrices=False)[2][0]
    fig, axes = subplots(2, n, figsize=(3 * n, 4))
    for j, i in enumerate(pick):
        axes[0, j].imshow(frames[i], cmap="gray", vmin=0, vmax=255)
        axes[0, j].set_title(f"frame {i}", fontsize=8)
        axes[1, j].imshow(((feats[i] - feats.reshape(-1, feats.shape[-1]).mean(0)) @ component).reshape(grid),
                          cmap="RdBu_r")
        axes[1, j].set_title(f"features, PC1 ({grid[0]}x{grid[1]})", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return png


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="recording (.h5) whose movies to encode")
    src.add_argument("--video", type=Path, help="video file (mp4/avi)")
    src.add_argument("--quick", action="store_true", help="encode a small synthetic recording")
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "patch", "conv3d"])
    parser.add_argument("--weights", help="resnet18 state_dict file (default: torchvision's cache, else random)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the figure")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    cfg = BackboneConfig(name=args.backbone, weights=args.weights)
    if args.quick:
        args.data = write_synthetic(args.output / "quick.h5", SyntheticConfig(
            n_neurons=5, trial_length=2, n_movies=1, n_trials=3, n_heldout_movies=1, heldout_trials=1))[0]
    frames, feats, grid, cache = (video_features(args.video, cfg) if args.video
                                  else recording_features(args.data, cfg))
    png = figure(frames, feats, grid, args.output / f"features_{args.backbone}.png")
    print(f"features {feats.shape} cached in {cache}; figure {png}")


if __name__ == "__main__":
    main()
