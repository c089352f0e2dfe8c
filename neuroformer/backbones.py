"""Visual backbones: frames (B, F, H, W) uint8 -> features (B, F, P, C) on a spatial grid of P.

- `patch`: raw pixels of non-overlapping p x p patches (no learned filter before the encoder).
- `conv3d`: a small 3-D convolution over time and space, trained from scratch.
- `resnet18`: torchvision's ResNet-18 up to `layer2` (stride 8, 128 channels), so 64x112
  frames keep an 8x14 grid; ImageNet weights from a file or torchvision's cache, else random
  with a warning (nothing is downloaded). Frozen by default; `pool` averages the grid (2: 4x7).
"""
import warnings
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PatchBackbone(nn.Module):
    def __init__(self, frame_shape, patch):
        super().__init__()
        h, w = frame_shape
        if h % patch or w % patch:
            raise ValueError(f"frames of {h}x{w} do not split into {patch}x{patch} patches")
        self.patch, self.grid, self.channels = patch, (h // patch, w // patch), patch * patch

    def forward(self, frames):
        B, F, H, W = frames.shape
        p = self.patch
        x = frames.float() / 255.0 - 0.5
        x = x.view(B, F, H // p, p, W // p, p).permute(0, 1, 2, 4, 3, 5)
        return x.reshape(B, F, (H // p) * (W // p), p * p)


class Conv3dBackbone(nn.Module):
    def __init__(self, frame_shape, stride, channels=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(1, channels, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3)), nn.GELU(),
            nn.Conv3d(channels, channels, (3, 3, 3), stride=(1, stride // 2, stride // 2), padding=1), nn.GELU())
        self.channels = channels
        with torch.no_grad():
            self.grid = tuple(self.net(torch.zeros(1, 1, 1, *frame_shape)).shape[-2:])

    def forward(self, frames):
        x = self.net(frames.float().unsqueeze(1) / 255.0 - 0.5)          # (B, C, F, h, w)
        return x.flatten(3).permute(0, 2, 3, 1)                           # (B, F, P, C)


class ResNetBackbone(nn.Module):
    def __init__(self, frame_shape, weights=None, frozen=True, pool=1):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        state = _resnet_weights(weights)
        if state is None:
            warnings.warn("resnet18: no pretrained weights found (file or torchvision cache); using random weights")
        else:
            net.load_state_dict(state)
        self.net = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                                 nn.AvgPool2d(pool) if pool > 1 else nn.Identity())
        self.frozen, self.channels = frozen, 128
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if frozen:
            self.net.requires_grad_(False).eval()
        with torch.no_grad():
            self.grid = tuple(self.net(torch.zeros(1, 3, *frame_shape)).shape[-2:])

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.net.eval()                                   # frozen batch-norm statistics
        return self

    def forward(self, frames):
        B, F, H, W = frames.shape
        x = (frames.reshape(B * F, 1, H, W).float() / 255.0).expand(-1, 3, -1, -1)
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            y = self.net((x - self.mean) / self.std)
        return y.flatten(2).transpose(1, 2).reshape(B, F, -1, self.channels)


def _resnet_weights(path):
    """A state_dict from `path`, else torchvision's cache, else None (never downloads)."""
    if path:
        return torch.load(path, map_location="cpu", weights_only=True)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    return torch.load(cached, map_location="cpu", weights_only=True) if cached.exists() else None


def make_backbone(cfg, frame_shape):
    if cfg.name == "patch":
        return PatchBackbone(frame_shape, cfg.patch)
    if cfg.name == "conv3d":
        return Conv3dBackbone(frame_shape, cfg.patch)
    return ResNetBackbone(frame_shape, cfg.weights, cfg.frozen, cfg.pool)
