"""Backgrounds to put studio items on: procedural floor-like textures, or real photos from a folder.

Everything here is offline. The procedural families are the common kinds of floor and ground
(wood planks and decking, tiles, woven/plaid carpet, speckled concrete/gravel, grass, smooth
noise), drawn with random colours, scales and lighting; none is fitted to any evaluation image.
A folder of real photos (``--backgrounds DIR``: e.g. the empty drop tray of your own bin) is
mixed in when given. Never point it at an evaluation set::

    bank = BackgroundBank(folder=None)
    bg = bank.sample(8, 256, generator=torch.Generator().manual_seed(0))   # float [8, 3, 256, 256] in [0, 1]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FAMILIES = ("planks", "tiles", "plaid", "speckle", "grass", "noise")


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=gen)


def value_noise(n: int, size: int, gen: torch.Generator, octaves: tuple[int, ...] = (2, 4, 8, 16, 32),
                persistence: float = 0.6, aspect: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Multi-octave value noise ``[n, 1, size, size]`` in [0, 1]; ``aspect`` stretches it (grain)."""
    total = torch.zeros(n, 1, size, size)
    weight_sum = 0.0
    for k, o in enumerate(octaves):
        w = persistence ** k
        coarse = _rand(gen, n, 1, max(1, o * aspect[0]), max(1, o * aspect[1]))
        total += w * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        weight_sum += w
    total /= weight_sum
    lo = total.amin(dim=(2, 3), keepdim=True)
    hi = total.amax(dim=(2, 3), keepdim=True)
    return (total - lo) / (hi - lo + 1e-6)


def _palette(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two colours per image ``[n, 3, 1, 1]``: a random base of any hue, mostly unsaturated, and a shade of it."""
    base = _rand(gen, n, 3)
    grey = base.mean(1, keepdim=True)
    saturation = _rand(gen, n, 1) ** 2  # mostly muted, sometimes vivid
    base = grey + (base - grey) * saturation * 1.5
    brightness = 0.15 + 0.8 * _rand(gen, n, 1)
    base = (base / (base.mean(1, keepdim=True) + 1e-6) * brightness).clamp(0, 1)
    shade = (base * (0.4 + 0.5 * _rand(gen, n, 1))).clamp(0, 1)
    return base.view(n, 3, 1, 1), shade.view(n, 3, 1, 1)


def _mix(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * (1 - t) + b * t


def _grid(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.linspace(0, 1, size).view(1, 1, size, 1).expand(n, 1, size, size)
    xs = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(n, 1, size, size)
    return ys, xs


def planks(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Wood laminate or decking: boards with grain along them and a seam between them."""
    a, b = _palette(n, gen)
    ys, xs = _grid(n, size)
    boards = (2 + 8 * _rand(gen, n, 1, 1, 1))
    v = ys * boards
    board_id = v.floor()
    shift = torch.frac(torch.sin(board_id * 12.9898 + _rand(gen, n, 1, 1, 1) * 100) * 43758.5453)
    grain = value_noise(n, size, gen, octaves=(1, 2, 4, 8), aspect=(8, 1))
    t = (0.6 * grain + 0.4 * shift).clamp(0, 1)
    seam = (torch.frac(v) < 0.04 + 0.04 * _rand(gen, n, 1, 1, 1)).float()
    img = _mix(t, a, b) * (1 - 0.6 * seam)
    return img


def tiles(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Floor tiles: squares of slightly varying colour with grout lines."""
    a, b = _palette(n, gen)
    grout = _palette(n, gen)[0]
    ys, xs = _grid(n, size)
    count = 2 + 6 * _rand(gen, n, 1, 1, 1)
    u, v = xs * count, ys * count
    tile_var = torch.frac(torch.sin(u.floor() * 7.13 + v.floor() * 3.71) * 43758.5453)
    t = (0.3 * tile_var + 0.3 * value_noise(n, size, gen)).clamp(0, 1)
    width = 0.03 + 0.05 * _rand(gen, n, 1, 1, 1)
    line = ((torch.frac(u) < width) | (torch.frac(v) < width)).float()
    return _mix(line, _mix(t, a, b), grout)


def plaid(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Woven carpet or rug: crossing bands of two colours over a fine weave."""
    a, b = _palette(n, gen)
    c = _palette(n, gen)[0]
    ys, xs = _grid(n, size)
    freq = 2 + 6 * _rand(gen, n, 1, 1, 1)
    bands_x = (torch.sin(xs * freq * 2 * math.pi) > 0.3).float()
    bands_y = (torch.sin(ys * freq * 2 * math.pi + 1.0) > 0.3).float()
    weave = value_noise(n, size, gen, octaves=(64, 128), persistence=0.8)
    img = _mix(0.5 * bands_x + 0.5 * bands_y, a, b)
    img = _mix((bands_x * bands_y) * 0.6, img, c)
    return img * (0.85 + 0.3 * weave)


def speckle(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Concrete, asphalt, gravel or a flecked carpet: fine grains over a smooth base."""
    a, b = _palette(n, gen)
    fine = _rand(gen, n, 1, size, size)
    fine = F.avg_pool2d(fine, 3, 1, 1, count_include_pad=False)
    t = (0.5 * value_noise(n, size, gen) + 0.7 * (fine - 0.5)).clamp(0, 1)
    return _mix(t, a, b)


def grass(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Real or artificial grass, moss, leaves: green-yellow-brown blades stretched vertically."""
    hue = torch.stack([0.25 + 0.3 * _rand(gen, n), 0.35 + 0.4 * _rand(gen, n), 0.05 + 0.2 * _rand(gen, n)], 1)
    dark = hue * (0.2 + 0.3 * _rand(gen, n, 1))
    blades = value_noise(n, size, gen, octaves=(16, 32, 64), persistence=0.9, aspect=(1, 4))
    return _mix(blades, dark.view(n, 3, 1, 1), hue.view(n, 3, 1, 1))


def noise(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Any other surface: smooth coloured noise (tablecloths, soil, painted floors)."""
    a, b = _palette(n, gen)
    return _mix(value_noise(n, size, gen), a, b)


_MAKERS = {"planks": planks, "tiles": tiles, "plaid": plaid, "speckle": speckle, "grass": grass, "noise": noise}


def _lighting(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random light gradient and a random 90-degree orientation, as a camera would see a floor."""
    n, _, size, _ = img.shape
    ys, xs = _grid(n, size)
    angle = _rand(gen, n, 1, 1, 1) * 2 * math.pi
    ramp = (xs - 0.5) * torch.cos(angle) + (ys - 0.5) * torch.sin(angle)
    img = img * (1 + 0.6 * _rand(gen, n, 1, 1, 1) * ramp)
    k = int(_rand(gen, 1).item() * 4)
    return torch.rot90(img, k, dims=(2, 3)).clamp(0, 1)


def procedural(n: int, size: int, gen: torch.Generator, families: tuple[str, ...] = FAMILIES) -> torch.Tensor:
    """``n`` procedural backgrounds ``[n, 3, size, size]`` in [0, 1], families drawn uniformly."""
    pick = torch.randint(len(families), (n,), generator=gen)
    out = torch.empty(n, 3, size, size)
    for k, fam in enumerate(families):
        idx = (pick == k).nonzero().flatten()
        if len(idx):
            out[idx] = _MAKERS[fam](len(idx), size, gen)
    return _lighting(out, gen)


class BackgroundBank:
    """Procedural textures, plus random crops of the photos in ``folder`` when given (half the draws)."""

    POOL = 256       # procedural backgrounds drawn once, then reused with random flips and shifts
    REFRESH = 2      # ... and this many replaced on every call, so the pool keeps changing

    def __init__(self, folder: str | Path | None = None, size: int = 256, max_photos: int = 500) -> None:
        self.photos: torch.Tensor | None = None
        self.pool: torch.Tensor | None = None
        if folder:
            self.photos = _load_photos(Path(folder), size, max_photos)

    def _procedural(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        # Drawing textures costs ~20 ms an image; a pool refreshed a little on every call costs
        # a fraction of that and still shows thousands of distinct floors over a run.
        if self.pool is None or self.pool.shape[-1] != size:
            self.pool = (procedural(self.POOL, size, gen) * 255).round().to(torch.uint8)
        else:
            slots = torch.randint(self.POOL, (self.REFRESH,), generator=gen)
            self.pool[slots] = (procedural(self.REFRESH, size, gen) * 255).round().to(torch.uint8)
        pick = torch.randint(self.POOL, (n,), generator=gen)
        out = self.pool[pick].float().div_(255.0)
        flip = _rand(gen, n) < 0.5
        out[flip] = out[flip].flip(-1)
        shift = int(_rand(gen, 1).item() * size)
        return torch.roll(out, shifts=shift, dims=-1)

    def sample(self, n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator or torch.Generator().manual_seed(int(torch.randint(2**31, (1,)).item()))
        out = self._procedural(n, size, gen)
        if self.photos is not None and len(self.photos):
            use = _rand(gen, n) < 0.5
            idx = use.nonzero().flatten()
            if len(idx):
                pick = torch.randint(len(self.photos), (len(idx),), generator=gen)
                photos = self.photos[pick].float().div(255.0)
                if photos.shape[-1] != size:
                    photos = F.interpolate(photos, size=(size, size), mode="bilinear", align_corners=False)
                out[idx] = photos
        return out


def _load_photos(folder: Path, size: int, limit: int) -> torch.Tensor:
    from wastenet.data.images import IMAGE_EXTENSIONS, ImageDecodeError, load_image
    from wastenet.errors import ConfigError
    from wastenet.preprocessing import fit_square

    if not folder.is_dir():
        raise ConfigError(f"backgrounds folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    arrays = []
    for f in files:
        try:
            arrays.append(fit_square(load_image(f), size))
        except ImageDecodeError:
            continue  # an unreadable background is no loss: the procedural ones remain
    if not arrays:
        raise ConfigError(f"no readable background photos in {folder}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
