"""Frozen visual features, computed once per recording and cached beside it.

The cache `REC.<backbone tag>.features.h5` (e.g. `resnet18`, `resnet18-pool2`) holds one feature map per stored movie frame
(`features`: (n_frames, P, C) float16, in the order of `movies.frames`), with the backbone's
name, grid and weight source as attributes. Because movies are stored once, a movie repeated
over many trials is encoded once.
"""
import hashlib
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from .backbones import make_backbone
from .data.recording import movie_frame_dataset, open_recording
from .errors import InputError
from .io import atomic_path


def cache_path(recording, backbone_cfg):
    return Path(recording).with_suffix(f".{backbone_cfg.tag}.features.h5")


def _weights_tag(backbone_cfg):
    if backbone_cfg.weights:
        return hashlib.sha1(Path(backbone_cfg.weights).read_bytes()).hexdigest()[:12]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    return "torchvision-cache" if cached.exists() else "random-seed0"


def compute_features(recording, backbone_cfg, batch_size=64, device="cpu", force=False):
    """Encode every stored movie frame of `recording` with the frozen backbone; returns the cache path."""
    out = cache_path(recording, backbone_cfg)
    tag = _weights_tag(backbone_cfg)
    if out.exists() and not force:
        with h5py.File(out, "r") as f:
            if f.attrs.get("weights") == tag:
                return out
    data = open_recording(recording)
    try:
        if "movies" not in data.keys():
            raise InputError(recording, ("movies", "the recording has no movie to encode"))
        frames = movie_frame_dataset(data)
        torch.manual_seed(0)                            # random weights, when used, are reproducible
        backbone = make_backbone(backbone_cfg, frames.shape[1:3]).to(device).eval()
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f, torch.no_grad():
            n_pos = backbone.grid[0] * backbone.grid[1]
            ds = f.create_dataset("features", (len(frames), n_pos, backbone.channels), dtype=np.float16,
                                  chunks=(1, n_pos, backbone.channels))
            for a in tqdm(range(0, len(frames), batch_size), desc=f"{backbone_cfg.name} features", unit="batch",
                          leave=False):
                x = torch.from_numpy(np.asarray(frames[a:a + batch_size])).to(device)
                ds[a:a + len(x)] = backbone(x.unsqueeze(1))[:, 0].float().cpu().numpy().astype(np.float16)
            f.attrs.update(backbone=backbone_cfg.name, grid=list(backbone.grid), weights=tag,
                           frames=len(frames))
    finally:
        data.file.close()
    return out
