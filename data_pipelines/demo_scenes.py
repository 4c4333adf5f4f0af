"""Procedural scenes for the embedded demo: coloured shapes on textured backgrounds, with captions.

Each of the 12 categories has a visual identity a small model can learn in minutes: a shape, a
signature colour (fixed hue, small jitter) and a texture (solid, stripes, dots or checker) painted
with two shades of that colour, so a cell's mean colour keeps the hue. The 6 backgrounds are
textured and weakly saturated (saturation <= 0.35, objects >= 0.55): colour alone separates objects
from background, shape and colour together tell categories apart.

A scene holds 1-4 objects (probabilities 0.4, 0.3, 0.2, 0.1), each 30-60% of the image side,
drawn in order (later on top). Every object keeps at least 40% of its pixels visible: otherwise
its pose is drawn again, and after repeated failures the whole scene. The label map shows what is
visible: 0 background, 1..12 the categories in `CATEGORIES` order.

Held-out combinations: category i never appears on background i % 6 in training scenes.
Evaluation scenes (`held_out=True`) always contain at least one such pair: their background with
one of its held-out categories; their other objects are drawn from all categories.

Captions name every object category, nothing else about the objects: never a colour or texture.
With `palette='shared'` each object instead draws its look (colour and texture) from the pool of all categories'
looks, independently of its shape: only the shape tells the name (the world where CLIP must learn shapes).
"""
from collections import Counter
from collections.abc import Callable, Sequence
import colorsys
import dataclasses
import functools

import numpy as np

_TEMPLATE_SIZE = 256  # Shapes are rasterised once at this resolution, then sampled per object.
_OBJECT_COUNT_PROBS = (0.4, 0.3, 0.2, 0.1)
# Object extent as a fraction of the image side, drawn with density rising quadratically towards the
# top: large objects give clear pseudo masks, and objects cover about a quarter of the pixels.
_SIZE_RANGE = (0.3, 0.6)
_MAX_ROTATION = np.deg2rad(12)  # Small enough that a square never looks like a diamond.
_MAX_ASPECT_JITTER = 0.1
_MIN_VISIBLE = 0.4
_POSE_TRIES = 30
_HUE_JITTER = 4 / 360
_SV_JITTER = 0.07
_MAX_BACKGROUND_SATURATION = 0.35
_MIN_OBJECT_SATURATION = 0.55
PALETTES = ('per_class', 'shared')


@dataclasses.dataclass(frozen=True)
class Category:
  name: str
  plural: str
  hsv: tuple[float, float, float]  # Signature colour: hue in degrees, saturation, value.
  texture: str  # 'solid', 'stripes', 'dots' or 'checker'.


# Hues go round the colour wheel; neighbours differ in value or texture as well.
CATEGORIES = (
    Category('circle', 'circles', (0, 0.9, 0.9), 'solid'),
    Category('square', 'squares', (235, 0.95, 0.75), 'solid'),
    Category('triangle', 'triangles', (55, 0.9, 1.0), 'solid'),
    Category('star', 'stars', (28, 0.95, 1.0), 'stripes'),
    Category('heart', 'hearts', (300, 0.85, 0.9), 'solid'),
    Category('cross', 'crosses', (135, 0.85, 0.6), 'solid'),
    Category('ring', 'rings', (180, 0.85, 0.85), 'solid'),
    Category('diamond', 'diamonds', (270, 0.75, 0.9), 'stripes'),
    Category('moon', 'moons', (90, 0.85, 0.85), 'dots'),
    Category('arrow', 'arrows', (350, 0.85, 0.5), 'checker'),
    Category('house', 'houses', (208, 0.8, 1.0), 'checker'),
    Category('drop', 'drops', (335, 0.65, 1.0), 'dots'),
)
CLASS_NAMES = tuple(c.name for c in CATEGORIES)


@dataclasses.dataclass(frozen=True)
class Background:
  name: str
  hsv: tuple[float, float, float]
  places: tuple[str, ...]  # How captions mention it.


BACKGROUNDS = (
    Background('grass', (100, 0.35, 0.5), ('on the grass', 'on grass', 'in the grass')),
    Background('sand', (40, 0.28, 0.82), ('on the sand', 'on sand')),
    Background('water', (205, 0.3, 0.6), ('over water', 'on the water', 'in water')),
    Background('brick', (12, 0.35, 0.55), ('on bricks', 'in front of bricks')),
    Background('wood', (28, 0.4, 0.45), ('on wood', 'on the wood')),
    Background('snow', (210, 0.06, 0.93), ('in the snow', 'on snow')),
)
BACKGROUND_NAMES = tuple(b.name for b in BACKGROUNDS)


def held_out_background(category: int) -> int:
  """The background category `category` never appears on in training scenes."""
  return category % len(BACKGROUNDS)


HELD_OUT_PAIRS = tuple((c.name, BACKGROUND_NAMES[held_out_background(i)]) for i, c in enumerate(CATEGORIES))


@dataclasses.dataclass(frozen=True)
class Scene:
  image: np.ndarray  # uint8 [S, S, 3]
  labels: np.ndarray  # uint8 [S, S]: 0 background, i + 1 for CATEGORIES[i].
  objects: tuple[str, ...]  # Category names in drawing order.
  background: str
  caption: str


# ---------------------------------------------------------------------------------------------
# Shapes and textures, as templates over local coordinates u (right) and v (down) in [-1, 1].


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: Sequence[tuple[float, float]]) -> np.ndarray:
  """Even-odd rule point-in-polygon test."""
  inside = np.zeros(u.shape, bool)
  for (u1, v1), (u2, v2) in zip(vertices, [*vertices[1:], vertices[0]]):
    crosses = (v1 > v) != (v2 > v)
    with np.errstate(divide='ignore', invalid='ignore'):
      u_at_v = u1 + (v - v1) * (u2 - u1) / (v2 - v1)
    inside ^= crosses & (u < u_at_v)
  return inside


def _star(u, v):
  angles = -np.pi / 2 + np.arange(10) * np.pi / 5
  radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.58)
  return _inside_polygon(u, v, list(zip(radii * np.cos(angles), radii * np.sin(angles))))


def _heart(u, v):
  x, y = 1.15 * u, 0.1 - 1.15 * v
  return (x**2 + y**2 - 1)**3 - x**2 * y**3 <= 0


def _drop(u, v):
  # A circle and the triangle from the tip (0, -1) to the circle's two tangent points.
  center, radius = 0.3, 0.68
  spread = np.arccos(radius / (center + 1))
  tangents = [(radius * np.cos(a), center + radius * np.sin(a)) for a in (-np.pi / 2 - spread, -np.pi / 2 + spread)]
  return (u**2 + (v - center)**2 <= radius**2) | _inside_polygon(u, v, [(0, -1), *tangents])


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'circle': lambda u, v: u**2 + v**2 <= 1,
    'square': lambda u, v: np.maximum(abs(u), abs(v)) <= 0.92,
    'triangle': lambda u, v: _inside_polygon(u, v, [(0, -1), (1, 0.9), (-1, 0.9)]),
    'star': _star,
    'heart': _heart,
    'cross': lambda u, v: (np.maximum(abs(u), abs(v)) <= 0.95) & (np.minimum(abs(u), abs(v)) <= 0.36),
    'ring': lambda u, v: (u**2 + v**2 <= 1) & (u**2 + v**2 >= 0.5**2),
    'diamond': lambda u, v: abs(u) / 0.68 + abs(v) <= 1,  # Taller than wide: no tilted square.
    'moon': lambda u, v: (u**2 + v**2 <= 1) & ((u - 0.55)**2 + (v + 0.2)**2 > 0.75**2),
    'arrow': lambda u, v: _inside_polygon(
        u, v, [(-1, -0.35), (0, -0.35), (0, -0.95), (1, 0), (0, 0.95), (0, 0.35), (-1, 0.35)]),
    'house': lambda u, v: ((abs(u) <= 0.85) & (v >= -0.05) & (v <= 0.95))
                          | _inside_polygon(u, v, [(0, -1), (1, -0.05), (-1, -0.05)]),
    'drop': _drop,
}

# Second-shade pattern of each texture; periods scale with the object.
_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'solid': lambda u, v: np.zeros(u.shape, bool),
    'stripes': lambda u, v: np.floor((u + v) * 2.5) % 2 == 1,
    'dots': lambda u, v: ((u * 3) % 1 - 0.5)**2 + ((v * 3) % 1 - 0.5)**2 < 0.3**2,
    'checker': lambda u, v: (np.floor(u * 2) + np.floor(v * 2)) % 2 == 1,
}


@functools.cache
def _template(shape: int, texture: str) -> np.ndarray:
  """uint8 [T, T] of CATEGORIES[shape]'s shape with `texture`: 0 outside the shape, 1 main shade, 2 second shade."""
  coords = (np.arange(_TEMPLATE_SIZE) + 0.5) / _TEMPLATE_SIZE * 2 - 1
  v, u = np.meshgrid(coords, coords, indexing='ij')
  inside = _SHAPES[CATEGORIES[shape].name](u, v)
  return (inside * (1 + _TEXTURES[texture](u, v))).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Backgrounds: per-pixel brightness patterns times a jittered, weakly saturated base colour.


@functools.cache
def _upsample_matrix(size: int, n: int) -> np.ndarray:
  """float32 [size, n]: periodic linear interpolation from n samples to `size` pixels."""
  position = (np.arange(size) + 0.5) / size * n - 0.5
  low = np.floor(position).astype(int)
  frac = position - low
  matrix = np.zeros((size, n), np.float32)
  np.add.at(matrix, (np.arange(size), low % n), 1 - frac)
  np.add.at(matrix, (np.arange(size), (low + 1) % n), frac)
  return matrix


def _smooth_noise(rng: np.random.Generator, size: int, rows: int, cols: int) -> np.ndarray:
  """Zero-mean, unit-scale value noise [size, size] with `rows` x `cols` control points."""
  return _upsample_matrix(size, rows) @ rng.standard_normal((rows, cols), np.float32) @ _upsample_matrix(size, cols).T


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel centres in [0, 1): y as [size, 1], x as [1, size]."""
  centres = ((np.arange(size) + 0.5) / size).astype(np.float32)
  return centres[:, None], centres[None, :]


def _grass(rng, size):
  blades = _smooth_noise(rng, size, 4, max(size // 2, 8))  # Stretched vertically, like blades.
  return 1 + 0.22 * blades + 0.07 * rng.standard_normal((size, size), np.float32)


def _sand(rng, size):
  y, x = _grid(size)
  angle = rng.uniform(-0.5, 0.5)
  ripples = np.sin(2 * np.pi * 6 * (x * np.sin(angle) + y * np.cos(angle)) + rng.uniform(0, 2 * np.pi))
  return 1 + 0.05 * ripples + 0.06 * rng.standard_normal((size, size), np.float32)


def _water(rng, size):
  y, x = _grid(size)
  sway = 0.08 * np.sin(2 * np.pi * (2 * x + rng.uniform()))
  waves = np.sin(2 * np.pi * (rng.uniform(6, 8) * (y + sway) + rng.uniform()))
  return 1 + 0.15 * waves + 0.05 * _smooth_noise(rng, size, 4, 4)


def _brick(rng, size):
  y, x = _grid(size)
  rows = rng.uniform(4.5, 6) * y + rng.uniform()
  row = np.floor(rows).astype(int)
  cols = 2.5 * x + 0.5 * (row % 2) + rng.uniform()
  col = np.floor(cols).astype(int)
  brick_shade = 1 + 0.1 * rng.standard_normal((8, 4), np.float32)
  shade = brick_shade[row % 8, col % 4]
  mortar = (rows % 1 < 0.12) | (cols % 1 < 0.05)
  return np.where(mortar, 1.45, shade)  # Light mortar lines.


def _wood(rng, size):
  y, x = _grid(size)
  grain = np.sin(2 * np.pi * (9 * x + 0.5 * _smooth_noise(rng, size, 3, 6) + rng.uniform()))
  return 1 + 0.18 * grain + 0.04 * rng.standard_normal((size, size), np.float32)


def _snow(rng, size):
  y, _ = _grid(size)
  gradient = rng.choice((-1, 1)) * (y - 0.5)
  return 1 + 0.08 * gradient + 0.03 * _smooth_noise(rng, size, 4, 4) + 0.015 * rng.standard_normal(
      (size, size), np.float32)


_BACKGROUND_PATTERNS = {'grass': _grass, 'sand': _sand, 'water': _water, 'brick': _brick, 'wood': _wood,
                        'snow': _snow}


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(hue % 1, np.clip(saturation, 0, 1), np.clip(value, 0, 1)), np.float32)


def _paint_background(rng: np.random.Generator, background: Background, size: int) -> np.ndarray:
  hue, saturation, value = background.hsv
  base = _rgb(hue / 360 + rng.uniform(-6, 6) / 360,
              min(saturation + rng.uniform(-0.05, 0.05), _MAX_BACKGROUND_SATURATION),
              value + rng.uniform(-0.08, 0.08))
  shade = _BACKGROUND_PATTERNS[background.name](rng, size)
  return np.clip(shade[..., None] * base, 0, 1)


# ---------------------------------------------------------------------------------------------
# Objects.


def _object_shades(rng: np.random.Generator, category: Category) -> np.ndarray:
  """float32 [3, 3]: unused, main and second shade (indexed by the template value)."""
  hue, saturation, value = category.hsv
  hue = hue / 360 + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
  saturation = max(saturation + rng.uniform(-_SV_JITTER, _SV_JITTER), _MIN_OBJECT_SATURATION)
  value += rng.uniform(-_SV_JITTER, _SV_JITTER)
  second_value = value * 1.6 if value < 0.7 else value * 0.55  # Dark colours get a lighter second shade.
  return np.stack([np.zeros(3, np.float32), _rgb(hue, saturation, value), _rgb(hue, saturation, second_value)])


def _rasterise(rng: np.random.Generator, template: np.ndarray, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
  """A random pose of a `_template`: its bounding box in the image and the template values inside it."""
  low, high = _SIZE_RANGE
  half = (low + (high - low) * np.cbrt(rng.uniform())) * size / 2
  cy, cx = rng.uniform(half, size - half, 2)
  angle = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
  stretch_y, stretch_x = 1 + rng.uniform(-_MAX_ASPECT_JITTER, _MAX_ASPECT_JITTER, 2)
  reach = half * (1 + _MAX_ASPECT_JITTER) * np.sqrt(2)
  y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)), size)
  x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)), size)
  dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
  dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
  cos, sin = np.cos(angle), np.sin(angle)
  u = (cos * dx + sin * dy) / (half * stretch_x)
  v = (cos * dy - sin * dx) / (half * stretch_y)
  inside = (abs(u) < 1) & (abs(v) < 1)
  scale = _TEMPLATE_SIZE / 2
  iu = np.clip(((u + 1) * scale).astype(np.int32), 0, _TEMPLATE_SIZE - 1)
  iv = np.clip(((v + 1) * scale).astype(np.int32), 0, _TEMPLATE_SIZE - 1)
  return (slice(y0, y1), slice(x0, x1)), np.where(inside, template[iv, iu], 0)


def _place_objects(rng: np.random.Generator, templates: Sequence[np.ndarray],
                   size: int) -> list[tuple[tuple[slice, slice], np.ndarray]] | None:
  """Poses (as `_rasterise` gives them) leaving each object >= 40% visible; None if one cannot be found."""
  owner = np.zeros((size, size), np.int32)  # 0 background, j + 1 for object j.
  areas, placed = [], []
  for j, template in enumerate(templates):
    for _ in range(_POSE_TRIES):
      box, values = _rasterise(rng, template, size)
      candidate = owner.copy()
      candidate[box][values > 0] = j + 1
      visible = np.bincount(candidate.ravel(), minlength=j + 2)[1:]
      sizes = np.array([*areas, np.count_nonzero(values)])
      if sizes[-1] and np.all(visible >= _MIN_VISIBLE * sizes):
        owner = candidate
        areas.append(sizes[-1])
        placed.append((box, values))
        break
    else:
      return None
  return placed


def render(rng: np.random.Generator, categories: Sequence[int], background: int, size: int,
           palette: str = 'per_class') -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(image, labels, instances uint8 [S, S]: 0 background, j + 1 where object j is visible) of posed objects."""
  # Each object's look (colour and texture): its own category's, or any category's from the shared pool.
  looks = [int(i) for i in rng.integers(len(CATEGORIES), size=len(categories))] if palette == 'shared' \
      else list(categories)
  templates = [_template(c, CATEGORIES[look].texture) for c, look in zip(categories, looks)]
  while (placed := _place_objects(rng, templates, size)) is None:
    pass  # Rare: a crowded scene is posed again from scratch.
  image = _paint_background(rng, BACKGROUNDS[background], size)
  labels, instances = np.zeros((size, size), np.uint8), np.zeros((size, size), np.uint8)
  for j, (category, look, (box, values)) in enumerate(zip(categories, looks, placed)):
    shades = _object_shades(rng, CATEGORIES[look])
    drawn = values > 0
    image[box][drawn] = shades[values[drawn]]
    labels[box][drawn], instances[box][drawn] = category + 1, j + 1
  return np.round(image * 255).astype(np.uint8), labels, instances


# ---------------------------------------------------------------------------------------------
# Captions.

_NUMBER_WORDS = {2: 'two', 3: 'three', 4: 'four'}
# {objects} names every category; {place} is '' or ' ' + a background phrase.
_TEMPLATES = (
    '{objects}{place}.', 'a photo of {objects}{place}.', 'a picture of {objects}{place}.',
    'picture of {objects}{place}', 'an image of {objects}{place}.', 'a drawing of {objects}{place}.',
    'there {be} {objects}{place}.', 'look, {objects}{place}!', 'a simple scene with {objects}{place}.')
_PAIR_TEMPLATES = ('{first} next to {rest}{place}.', '{first} beside {rest}{place}.')


def _count_phrase(category: Category, count: int) -> str:
  if count == 1:
    return ('an ' if category.name[0] in 'aeiou' else 'a ') + category.name
  return f'{_NUMBER_WORDS[count]} {category.plural}'


def _join(phrases: Sequence[str]) -> str:
  return phrases[0] if len(phrases) == 1 else ', '.join(phrases[:-1]) + ' and ' + phrases[-1]


def make_caption(rng: np.random.Generator, categories: Sequence[int], background: int) -> str:
  """Names each category once (with its count), in random order; mentions the background half the time."""
  counts = Counter(categories)
  order = [int(c) for c in rng.permutation(sorted(counts))]
  phrases = [_count_phrase(CATEGORIES[c], counts[c]) for c in order]
  place = ' ' + str(rng.choice(BACKGROUNDS[background].places)) if rng.random() < 0.5 else ''
  templates = _TEMPLATES + (_PAIR_TEMPLATES if len(phrases) > 1 else ())
  return str(rng.choice(templates)).format(
      objects=_join(phrases), first=phrases[0], rest=_join(phrases[1:]) if len(phrases) > 1 else '',
      place=place, be='is' if counts[order[0]] == 1 else 'are')


# ---------------------------------------------------------------------------------------------


def _sample_categories(rng: np.random.Generator, background: int, held_out: bool) -> list[int]:
  num_objects = 1 + rng.choice(len(_OBJECT_COUNT_PROBS), p=_OBJECT_COUNT_PROBS)
  excluded = [c for c in range(len(CATEGORIES)) if held_out_background(c) == background]
  if held_out:
    categories = [int(rng.choice(excluded)), *rng.integers(len(CATEGORIES), size=num_objects - 1)]
    return [int(c) for c in rng.permutation(categories)]
  allowed = [c for c in range(len(CATEGORIES)) if c not in excluded]
  return [int(c) for c in rng.choice(allowed, size=num_objects)]


def make_scene(rng: np.random.Generator, size: int, held_out: bool = False, palette: str = 'per_class') -> Scene:
  """One random scene of `size` x `size` pixels; `held_out` draws an evaluation scene, `palette` says whether
  colours and textures belong to categories or are shared by all (module docstring)."""
  if size < 16:
    raise ValueError(f'Demo scenes need an image size of at least 16 pixels, got {size}.')
  if palette not in PALETTES:
    raise ValueError(f'Demo scene palette {palette!r}: use one of {PALETTES}.')
  background = int(rng.integers(len(BACKGROUNDS)))
  categories = _sample_categories(rng, background, held_out)
  image, labels, _ = render(rng, categories, background, size, palette)
  return Scene(image=image, labels=labels, objects=tuple(CATEGORIES[c].name for c in categories),
               background=BACKGROUNDS[background].name, caption=make_caption(rng, categories, background))
