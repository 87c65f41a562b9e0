"""Folders of sample photos for calibration tests: scikit-learn's bundled photos and the shared
sample images, cut into random crops and flips (seeded), written as image files."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from conftest import SHARED_DATA, shared_path

SHARED_PHOTOS = (SHARED_DATA / "real" / "ultraface" / "sample-imgs-13.jpg", SHARED_DATA / "real" / "fastestdet" / "sample-3.jpg")


@lru_cache(maxsize=1)
def source_photos() -> tuple[np.ndarray, ...]:
    """RGB uint8 photos: scikit-learn's two bundled ones plus the shared sample images present."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    for path in SHARED_PHOTOS:
        if path.is_file():
            with Image.open(path) as img:
                photos.append(np.asarray(img.convert("RGB")))
    return tuple(photos)


def augmented(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``n`` random crops (a quarter to all of a photo's side), flipped at random, resized to ``size`` (H, W)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = source_photos()
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.25, 1.0)), int(w * rng.uniform(0.25, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size[1], size[0]), Image.BILINEAR)))
    return out


def write_folder(folder: Path, n: int, size: tuple[int, int], seed: int = 0, suffix: str = ".png") -> Path:
    """Write ``n`` augmented photos of ``size`` into ``folder`` as ``img_000.png`` ...; returns the folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, arr in enumerate(augmented(n, size, seed)):
        Image.fromarray(arr).save(folder / f"img_{i:03d}{suffix}")
    return folder


def require(path: Path) -> Path:
    """A shared data file: missing fails in CI, else skips with the reason (conftest's one rule)."""
    return shared_path(path)
