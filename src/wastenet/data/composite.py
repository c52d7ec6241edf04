"""Augmentation that breaks the studio shortcuts: new backgrounds, item scale, light and camera.

TrashNet shows one item on a nearly uniform white posterboard, filling much of the frame. A
model trained on it learns "posterboard + big item" and, on a real floor, sees the floor
(measured: MobileNetV2 called 614 of 854 field photos cardboard). These modules run on whole
float batches ``[B, 3, H, W]`` in [0, 1], before the Keras-style affine augmentation::

    comp = StudioComposite(min_cover=0.05, max_cover=1.0)       # matte off the board, new floor, new scale
    photo = CameraJitter(color=0.3, blur_jpeg=0.3)             # colour, white balance, blur, JPEG, noise
    x = photo(comp(x))

``studio_matte`` is what makes compositing possible without masks: the backdrop colour is the
median of the image border, and whatever differs from it by more than a few percent is the
item (with its shadow: real items cast shadows too).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wastenet.data.augment_config import AUTO_AUGMENT_MODES
from wastenet.data.backgrounds import BackgroundBank

# An image whose matte covers less than this, or more than MAX_MATTE, is not studio-like
# (white paper on the white board, a close-up of cardboard): it is left as it is.
MIN_MATTE, MAX_MATTE = 0.02, 0.85
MATTE_SIZE = 64  # the matte is computed at this size: 16x cheaper than at 256, and as good for an outline


def _border_strips(x: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """The image border of ``[..., H, W]``, ``depth`` pixels deep: top and bottom ``[..., depth, W]``,
    left and right ``[..., H, depth]`` (full length, so each corner is in two strips)."""
    return [x[..., :depth, :], x[..., -depth:, :], x[..., :, :depth], x[..., :, -depth:]]


def _edge_profiles(x: torch.Tensor, border: int) -> list[torch.Tensor]:
    """Top, bottom, left, right border strips averaged across their depth: ``[B, 3, L]`` each,
    median-filtered along the edge so an item touching part of an edge does not count as board."""
    top, bottom, left, right = _border_strips(x, border)
    out = []
    for s in (top.mean(-2), bottom.mean(-2), left.mean(-1), right.mean(-1)):
        win = max(3, (s.shape[-1] // 3) | 1)
        padded = F.pad(s, (win // 2, win // 2), mode="replicate")
        out.append(padded.unfold(-1, win, 1).median(-1).values)
    return out


def backdrop_surface(x: torch.Tensor, border: int = 6) -> torch.Tensor:
    """The studio board under the item ``[B, 3, H, W]``: a Coons patch spanned by the four border
    profiles, so the board's light fall-off (vignetting, a lamp on one side) is part of it."""
    _, _, h, w = x.shape
    top, bottom, left, right = _edge_profiles(x, border)
    v = torch.linspace(0, 1, h, device=x.device).view(1, 1, h, 1)
    u = torch.linspace(0, 1, w, device=x.device).view(1, 1, 1, w)
    corners = [(top[..., :1] + left[..., :1]) / 2, (top[..., -1:] + right[..., :1]) / 2,
               (bottom[..., :1] + left[..., -1:]) / 2, (bottom[..., -1:] + right[..., -1:]) / 2]
    c00, c01, c10, c11 = (c[..., None] for c in corners)
    ruled = ((1 - v) * top[..., None, :] + v * bottom[..., None, :]
             + (1 - u) * left[..., :, None] + u * right[..., :, None])
    bilinear = (1 - u) * (1 - v) * c00 + u * (1 - v) * c01 + (1 - u) * v * c10 + u * v * c11
    return ruled - bilinear


def studio_matte(x: torch.Tensor, border: int = 2, low: float = 0.08, high: float = 0.16) -> torch.Tensor:
    """Soft item mask ``[B, 1, H, W]`` in [0, 1] for studio photos ``[B, 3, H, W]`` in [0, 1].

    A pixel whose largest channel difference from the board (``backdrop_surface``), relative to
    the board's brightness, is under ``low`` is board, over ``high`` item, with a linear ramp
    between. A closing (dilate then erode) fills small holes, a blur softens the edges.
    """
    full = x.shape[-2:]
    small = F.interpolate(x, size=(MATTE_SIZE, MATTE_SIZE), mode="area") if x.shape[-1] > MATTE_SIZE else x
    blurred = F.avg_pool2d(small, 3, 1, 1, count_include_pad=False)
    board = backdrop_surface(blurred, border)
    # relative to the board's brightness: a grey board in dim light is the same board
    diff = ((blurred - board).abs() / (board.mean(1, keepdim=True) + 0.2)).amax(1, keepdim=True)
    alpha = ((diff - low) / (high - low)).clamp(0, 1)
    alpha = F.max_pool2d(alpha, 5, 1, 2)
    alpha = -F.max_pool2d(-alpha, 5, 1, 2)
    alpha = F.avg_pool2d(alpha, 3, 1, 1, count_include_pad=False)
    return F.interpolate(alpha, size=full, mode="bilinear", align_corners=False)


def is_studio_like(images_u8: torch.Tensor, max_texture: float = 0.02, min_share: float = 0.5) -> bool:
    """Whether most images of a uint8 batch ``[N, 3, H, W]`` have a plain, untextured border.

    Used by ``--composite auto``: TrashNet-like data (an item on a smooth board) gets
    compositing; photos of items in the wild do not (their background is already real). The
    texture is the mean absolute difference from a 5 x 5 blur over the four 16-pixel border
    strips; measured on 120 random images each: TrashNet median 0.008 (90th percentile 0.024),
    the floor photos of the field set median 0.047 (10th percentile 0.021).
    """
    x = images_u8.float().div(255.0)
    detail = (x - F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)).abs().mean(1)
    texture = torch.cat([s.flatten(1) for s in _border_strips(detail, 16)], 1).mean(1)
    return bool((texture < max_texture).float().mean() >= min_share)


class StudioComposite(nn.Module):
    """Matte each studio item off its board, rescale it, and place it on a new background.

    ``min_cover``..``max_cover``: the share of the frame the item's matte covers afterwards,
    drawn log-uniformly (a bin camera sees items from 5% of the frame to all of it); ``p``: the
    share of images composited (the others keep their studio look). ``min_cover=None`` keeps
    each item at its own scale and place (compositing without scale jitter).
    """

    def __init__(self, p: float = 0.8, min_cover: float | None = 0.05, max_cover: float = 1.0,
                 backgrounds: str | None = None) -> None:
        super().__init__()
        if min_cover is not None and not 0 < min_cover <= max_cover <= 1:
            raise ValueError("item cover must satisfy 0 < min <= max <= 1")
        self.p, self.min_cover, self.max_cover = p, min_cover, max_cover
        self.bank = BackgroundBank(backgrounds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        alpha = studio_matte(x)
        share = alpha.mean(dim=(1, 2, 3))
        use = (torch.rand(n) < self.p) & (share > MIN_MATTE) & (share < MAX_MATTE)
        idx = use.nonzero().flatten()
        if len(idx) == 0:
            return x
        xs, alphas, shares = x[idx], alpha[idx], share[idx]
        k = len(idx)
        bg = self.bank.sample(k, max(h, w))[..., :h, :w].to(x.device, x.dtype)
        out = x.clone()
        if self.min_cover is None:
            out[idx] = xs * alphas + bg * (1 - alphas)
            return out
        lo, hi = math.log(self.min_cover), math.log(self.max_cover)
        cover = torch.exp(lo + (hi - lo) * torch.rand(k))
        # the matte's share scales with the square of the zoom; zooming in past 1.4x crops too much
        zoom = (cover / shares.clamp(min=1e-3)).sqrt().clamp(0.15, 1.4)
        # item centre: anywhere that keeps most of it in the frame
        room = (1 - zoom).clamp(min=0)
        tx = (torch.rand(k) * 2 - 1) * room
        ty = (torch.rand(k) * 2 - 1) * room
        theta = torch.zeros(k, 2, 3)
        theta[:, 0, 0] = 1 / zoom
        theta[:, 1, 1] = 1 / zoom
        theta[:, 0, 2] = -tx / zoom
        theta[:, 1, 2] = -ty / zoom
        grid = F.affine_grid(theta, [k, 4, h, w], align_corners=False)
        moved = F.grid_sample(torch.cat([xs, alphas], 1), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        item, a = moved[:, :3], moved[:, 3:4]
        out[idx] = item * a + bg * (1 - a)
        return out


class CameraJitter(nn.Module):
    """Colour, illumination and white balance, sensor noise, blur and JPEG artefacts.

    ``color``: strength of the brightness/contrast/saturation jitter (0 = off) plus a random
    white balance (kornia's Planckian jitter); ``blur_jpeg``: the probability of each of blur,
    JPEG re-compression and sensor noise. Brightness, contrast and saturation are per-image
    affine maps in RGB (kornia's HSV ColorJiggle costs 50 ms an image here), JPEG goes through
    Pillow's libjpeg (kornia's differentiable JPEG costs 110 ms an image).
    """

    def __init__(self, color: float = 0.3, blur_jpeg: float = 0.25) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.color, self.blur_jpeg = color, blur_jpeg
        self.white_balance = K.RandomPlanckianJitter(mode="blackbody", p=0.5) if color > 0 else None
        self.blur = K.RandomGaussianBlur((5, 5), (0.1, 2.0), p=blur_jpeg) if blur_jpeg > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if self.color > 0:
            c = self.color

            def draw() -> torch.Tensor:
                return (1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * c)

            x = x * draw()
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * draw() + mean
            grey = x.mean(1, keepdim=True)
            x = (grey + (x - grey) * draw()).clamp(0, 1)
            x = self.white_balance(x)
        if self.blur_jpeg > 0:
            x = self.blur(x)
            x = _random_jpeg(x, self.blur_jpeg)
            noisy = torch.rand(n, 1, 1, 1, device=x.device) < self.blur_jpeg
            x = x + noisy * torch.randn_like(x) * 0.03
        return x.clamp(0, 1)


def _random_jpeg(x: torch.Tensor, p: float, quality: tuple[int, int] = (30, 95)) -> torch.Tensor:
    """Re-compress a random share ``p`` of the batch as JPEG at a random quality (Pillow's libjpeg)."""
    import io

    import numpy as np
    from PIL import Image

    idx = (torch.rand(len(x)) < p).nonzero().flatten().tolist()
    if not idx:
        return x
    x = x.clone()
    for i in idx:
        q = int(torch.randint(quality[0], quality[1] + 1, (1,)))
        u8 = (x[i].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=q)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        x[i] = torch.from_numpy(back.copy()).permute(2, 0, 1).to(x.device, x.dtype) / 255.0
    return x


class PolicyAugment(nn.Module):
    """kornia's TrivialAugment or RandAugment (``policy``: trivial | rand) on float batches."""

    def __init__(self, policy: str) -> None:
        super().__init__()
        from kornia.augmentation.auto import RandAugment, TrivialAugment

        if policy not in AUTO_AUGMENT_MODES or policy == "none":
            raise ValueError(f"policy must be one of {', '.join(AUTO_AUGMENT_MODES[1:])}, not {policy!r}")
        self.op = TrivialAugment() if policy == "trivial" else RandAugment(n=2, m=9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x).clamp(0, 1)
