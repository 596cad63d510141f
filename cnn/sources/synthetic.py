"""Procedurally drawn blood-smear cells: a learnable, non-trivial stand-in for the NIH images.

A cell is a pinkish ellipse on a dark background with random size, position, rotation,
shading and noise. Parasitized cells carry one to three small purple blobs (some faint, some
ring-shaped); uninfected cells sometimes carry pale stain artefacts that a network has to
learn to tell from parasites.
"""

import numpy as np

GENERATOR_VERSION = 1


def draw_cell(rng: np.random.Generator, parasitized: bool) -> np.ndarray:
    """Draw one cell image as uint8 (side × side × 3), side between 60 and 140 pixels."""
    side = int(rng.integers(60, 141))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)

    center = side / 2 + rng.normal(0, side * 0.04, size=2)
    semi_major = side * rng.uniform(0.4, 0.49)
    semi_minor = semi_major * rng.uniform(0.8, 1.0)
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = yy - center[0], xx - center[1]
    u = (dx * cos + dy * sin) / semi_major
    v = (-dx * sin + dy * cos) / semi_minor
    radius = np.sqrt(u**2 + v**2)

    inside = np.clip((1.0 - radius) * semi_minor / 1.5, 0.0, 1.0)  # soft edge
    cell_color = np.array(
        [rng.uniform(190, 235), rng.uniform(115, 160), rng.uniform(140, 185)], np.float32
    )
    shading = 1.0 - 0.18 * radius**2 + rng.normal(0, 0.02)  # brighter middle, darker rim
    image = inside[..., None] * cell_color * shading[..., None]

    if parasitized:
        blobs = [_blob_params(rng, strong=True) for _ in range(int(rng.integers(1, 4)))]
    else:
        blobs = [
            _blob_params(rng, strong=False) for _ in range(int(rng.choice(3, p=[0.5, 0.35, 0.15])))
        ]
    for position, size, color, strength, ring in blobs:
        by = center[0] + position[0] * semi_minor * 0.65
        bx = center[1] + position[1] * semi_major * 0.65
        blob_radius = max(size * semi_minor, 1.2)
        distance = np.sqrt((yy - by) ** 2 + (xx - bx) ** 2) / blob_radius
        weight = np.exp(-(distance**2) * 2.0)
        if ring:
            weight = np.exp(-((distance - 0.8) ** 2) * 8.0)
        weight *= strength * inside
        image = image * (1 - weight[..., None]) + color * weight[..., None]

    image += rng.normal(0, rng.uniform(3, 9), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _blob_params(rng: np.random.Generator, strong: bool):
    """A parasite (strong, dark purple) or a stain artefact (pale, pinkish purple)."""
    position = rng.uniform(-1, 1, size=2)
    if strong:
        size = rng.uniform(0.07, 0.18)
        color = np.array([rng.uniform(70, 130), rng.uniform(25, 70), rng.uniform(110, 170)])
        strength = rng.uniform(0.55, 0.95)
        ring = rng.random() < 0.3
    else:
        size = rng.uniform(0.08, 0.22)
        color = np.array([rng.uniform(150, 190), rng.uniform(95, 130), rng.uniform(140, 180)])
        strength = rng.uniform(0.3, 0.7)
        ring = False
    return position, size, color.astype(np.float32), strength, ring
