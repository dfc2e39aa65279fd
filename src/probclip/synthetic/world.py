"""The synthetic world: seeded scenes of simple shapes, captions with exact truth, and datasets over them.

A scene holds one or two objects, each with a ``shape``, ``colour``, ``size`` and ``position`` (one of four
cells of the image), drawn at 32 x 32 pixels (rendered at 4x and downsampled). An image may be degraded at a
controlled level 0 (clean) ... 4 (almost no information left) by noise, blur or occlusion.

Captions are predicates over scenes, at six levels of specificity:

- level 0 ... 4: "there is an object with these k attributes" (k = level), e.g. level 0 "a shape",
  level 1 "a red shape", level 2 "a red circle", level 4 "a large red circle at the top left";
- level 5 (the full scene): "only a large red circle at the top left and a small blue square at the bottom right"
  (exactly these objects, nothing else).

The truth of any (scene, caption) pair is therefore exact (``caption_is_true``, ``truth_matrix``), many captions
are true of many images, and entailment between captions is decidable (``entails``): a caption entails another
when every scene satisfying the first satisfies the second.

Splits: ``train`` never contains an object whose (shape, colour) pair is one of ``HELDOUT_COMBINATIONS``;
``test`` draws objects from all combinations (so about a quarter of its objects show combinations never seen
in training); ``test_heldout`` gives every scene's first object a held-out combination. Each split draws from its
own seeded stream, so the same index gives the same item on every machine and call.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "POSITIONS",
    "ATTRIBUTES",
    "NUM_LEVELS",
    "DEGRADATION_LEVELS",
    "HELDOUT_COMBINATIONS",
    "SPLITS",
    "SceneObject",
    "Scene",
    "Caption",
    "sample_scene",
    "render_scene",
    "captions_at_level",
    "sample_captions",
    "caption_is_true",
    "truth_matrix",
    "entails",
    "entailment_matrix",
    "parse_caption",
    "phrase_view",
    "world_vocabulary",
    "SyntheticDataset",
]

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 45, 45),
    "green": (45, 185, 70),
    "blue": (55, 95, 235),
    "yellow": (235, 215, 50),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
#: Attribute names in the order they appear in a description ("a large red circle at the top left").
ATTRIBUTES = ("size", "colour", "shape", "position")
#: Specificity levels 0 (most general) ... 5 (the full scene).
NUM_LEVELS = 6
FULL_SCENE_LEVEL = NUM_LEVELS - 1
#: Degradation levels 0 (clean) ... 4 (strongest).
DEGRADATION_LEVELS = 5
DEGRADATION_KINDS = ("noise", "blur", "occlusion")
#: (shape, colour) pairs absent from the training split; a Latin square, so every shape and every colour keeps
#: three of its four partners in training.
HELDOUT_COMBINATIONS = (("circle", "blue"), ("square", "yellow"), ("triangle", "red"), ("cross", "green"))
SPLITS = ("train", "test", "test_heldout")
_SPLIT_CODES = {"train": 11, "test": 23, "test_heldout": 37}

IMAGE_SIZE = 32
_RENDER_SCALE = 4
_BACKGROUND = (30, 30, 34)
#: Radius (in pixels of the 32 px image) of each size.
_RADIUS = {"small": 4.5, "large": 7.0}
#: Noise blend weight, blur radius (px) and occluded fraction of the image side per degradation level.
_NOISE_WEIGHT = (0.0, 0.35, 0.55, 0.72, 0.88)
_BLUR_RADIUS = (0.0, 1.0, 1.8, 2.8, 4.5)
_OCCLUSION_SIDE = (0.0, 0.35, 0.5, 0.65, 0.85)


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene; every attribute takes a value from ``SHAPES``/``COLOURS``/``SIZES``/``POSITIONS``."""

    shape: str
    colour: str
    size: str
    position: str

    def value(self, attribute: str) -> str:
        """The object's value of ``attribute`` (one of ``ATTRIBUTES``)."""
        return getattr(self, attribute)


@dataclass(frozen=True)
class Scene:
    """A scene: its objects (first = main object), degradation level 0..4 and kind, and the pixel jitter seed."""

    objects: tuple[SceneObject, ...]
    degradation: int = 0
    degradation_kind: str = "noise"
    jitter_seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready description."""
        return {
            "objects": [dict(shape=o.shape, colour=o.colour, size=o.size, position=o.position) for o in self.objects],
            "degradation": self.degradation,
            "degradation_kind": self.degradation_kind,
        }


@dataclass(frozen=True)
class Caption:
    """A caption as a predicate.

    ``descriptions``: one partial object description per object mentioned, each a tuple of ``(attribute, value)``
    pairs in ``ATTRIBUTES`` order. ``exclusive``: the scene holds exactly the described objects (full-scene
    captions). ``level``: specificity 0..5.
    """

    descriptions: tuple[tuple[tuple[str, str], ...], ...]
    exclusive: bool = False
    level: int = 0
    text: str = field(default="", compare=False)


# ------------------------------------------------------------------------------------------------ scenes
def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**63, *[int(p) for p in parts]])


def _allowed(shape: str, colour: str, split: str) -> bool:
    return split != "train" or (shape, colour) not in HELDOUT_COMBINATIONS


def sample_scene(rng: np.random.Generator, split: str = "train", max_objects: int = 2,
                 degradation: int = 0, degradation_kind: str = "noise") -> Scene:
    """Draw a scene of ``1 .. max_objects`` objects in distinct cells, respecting the split's combinations.

    Args:
        rng: numpy generator (the only source of randomness).
        split: one of ``SPLITS``.
        max_objects: 1 .. 4.
        degradation: level 0 .. 4; ``degradation_kind``: one of ``DEGRADATION_KINDS``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if not 1 <= max_objects <= len(POSITIONS):
        raise ValueError(f"max_objects must be in 1..{len(POSITIONS)}; got {max_objects}")
    _check_degradation(degradation, degradation_kind)
    count = int(rng.integers(1, max_objects + 1))
    cells = rng.permutation(len(POSITIONS))[:count]
    colours = tuple(COLOURS)
    objects = []
    for i, cell in enumerate(cells):
        if split == "test_heldout" and i == 0:
            shape, colour = HELDOUT_COMBINATIONS[int(rng.integers(len(HELDOUT_COMBINATIONS)))]
        else:
            while True:
                shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], colours[int(rng.integers(len(colours)))]
                if _allowed(shape, colour, split):
                    break
        size = SIZES[int(rng.integers(len(SIZES)))]
        objects.append(SceneObject(shape, colour, size, POSITIONS[int(cell)]))
    return Scene(tuple(objects), degradation, degradation_kind, int(rng.integers(2**31)))


def _check_degradation(level: int, kind: str) -> None:
    if not isinstance(level, (int, np.integer)) or not 0 <= level < DEGRADATION_LEVELS:
        raise ValueError(f"degradation level must be an integer in 0..{DEGRADATION_LEVELS - 1}; got {level!r}")
    if kind not in DEGRADATION_KINDS:
        raise ValueError(f"unknown degradation kind {kind!r}; expected one of {list(DEGRADATION_KINDS)}")


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "cross":
        a, b = r, r * 0.36
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]
    return None


def render_scene(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB PIL image of ``image_size`` x ``image_size`` pixels, degraded at its level.

    Objects sit in their cell with a small seeded offset; shapes are drawn at 4x and downsampled (anti-aliased).
    """
    scale = image_size * _RENDER_SCALE / IMAGE_SIZE
    canvas = Image.new("RGB", (image_size * _RENDER_SCALE,) * 2, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    jitter = _rng(scene.jitter_seed, 1)
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 2)
        cx = (8 + 16 * col + jitter.uniform(-0.5, 0.5)) * scale
        cy = (8 + 16 * row + jitter.uniform(-0.5, 0.5)) * scale
        r = _RADIUS[obj.size] * scale
        colour = COLOURS[obj.colour]
        points = _polygon(obj.shape, cx, cy, r)
        if points is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(points, fill=colour)
    image = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    return _degrade(image, scene.degradation, scene.degradation_kind, scene.jitter_seed)


def _degrade(image: Image.Image, level: int, kind: str, seed: int) -> Image.Image:
    if level == 0:
        return image
    rng = _rng(seed, 2)
    size = image.size[0]
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(_BLUR_RADIUS[level] * size / IMAGE_SIZE))
    pixels = np.asarray(image, dtype=np.float32)
    if kind == "noise":
        noise = rng.uniform(0, 255, size=pixels.shape).astype(np.float32)
        w = _NOISE_WEIGHT[level]
        pixels = (1 - w) * pixels + w * noise
    else:  # occlusion: a grey square over a seeded place
        side = int(round(_OCCLUSION_SIDE[level] * size))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        pixels = pixels.copy()
        pixels[y0:y0 + side, x0:x0 + side] = 128.0
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------------------ captions
def _describe(description: tuple[tuple[str, str], ...]) -> str:
    values = dict(description)
    words = ["a"]
    if "size" in values:
        words.append(values["size"])
    if "colour" in values:
        words.append(values["colour"])
    words.append(values.get("shape", "shape"))
    if "position" in values:
        words.append("at the " + values["position"])
    return " ".join(words)


def _caption(descriptions, exclusive: bool, level: int) -> Caption:
    descriptions = tuple(tuple(sorted(d, key=lambda kv: ATTRIBUTES.index(kv[0]))) for d in descriptions)
    if exclusive:
        descriptions = tuple(sorted(descriptions, key=lambda d: POSITIONS.index(dict(d)["position"])))
        text = "only " + " and ".join(_describe(d) for d in descriptions)
    else:
        text = _describe(descriptions[0])
    return Caption(descriptions, exclusive, level, text)


def _full_description(obj: SceneObject) -> tuple[tuple[str, str], ...]:
    return tuple((a, obj.value(a)) for a in ATTRIBUTES)


def captions_at_level(scene: Scene, level: int) -> list[Caption]:
    """Every distinct true caption of ``scene`` at specificity ``level`` (0..5), sorted by text."""
    if not 0 <= level < NUM_LEVELS:
        raise ValueError(f"caption level must be in 0..{NUM_LEVELS - 1}; got {level!r}")
    if level == FULL_SCENE_LEVEL:
        return [_caption([_full_description(o) for o in scene.objects], True, level)]
    found = {}
    for obj in scene.objects:
        for attributes in itertools.combinations(ATTRIBUTES, level):
            cap = _caption([tuple((a, obj.value(a)) for a in attributes)], False, level)
            found[cap.text] = cap
    return [found[t] for t in sorted(found)]


def sample_captions(scene: Scene, rng: np.random.Generator, levels: Sequence[int] = tuple(range(NUM_LEVELS)),
                    main_object_only: bool = False) -> list[Caption]:
    """One true caption of ``scene`` per entry of ``levels`` (attributes and object drawn with ``rng``).

    ``main_object_only``: partial captions describe the first object only.
    """
    chosen = []
    for level in levels:
        if level == FULL_SCENE_LEVEL:
            chosen.append(captions_at_level(scene, level)[0])
            continue
        objects = scene.objects[:1] if main_object_only else scene.objects
        obj = objects[int(rng.integers(len(objects)))]
        attributes = sorted(rng.choice(len(ATTRIBUTES), size=level, replace=False).tolist())
        chosen.append(_caption([tuple((ATTRIBUTES[a], obj.value(ATTRIBUTES[a])) for a in attributes)], False, level))
    return chosen


def _matches(obj: SceneObject, description) -> bool:
    return all(obj.value(a) == v for a, v in description)


def _injective_match(descriptions, objects, match) -> bool:
    """Is there an injective assignment of ``descriptions`` to ``objects`` with ``match(object, description)``?"""
    for perm in itertools.permutations(range(len(objects)), len(descriptions)):
        if all(match(objects[j], d) for d, j in zip(descriptions, perm)):
            return True
    return False


def caption_is_true(scene: Scene, caption: Caption) -> bool:
    """Truth of ``caption`` for ``scene`` (degradation does not change the truth: it is a property of the scene)."""
    if caption.exclusive and len(caption.descriptions) != len(scene.objects):
        return False
    return _injective_match(caption.descriptions, scene.objects, _matches)


def truth_matrix(scenes: Sequence[Scene], captions: Sequence[Caption]) -> np.ndarray:
    """Bool array ``[len(scenes), len(captions)]``: entry (i, j) is whether caption j is true of scene i."""
    out = np.zeros((len(scenes), len(captions)), dtype=bool)
    for i, scene in enumerate(scenes):
        for j, caption in enumerate(captions):
            out[i, j] = caption_is_true(scene, caption)
    return out


def entails(specific: Caption, general: Caption) -> bool:
    """True when every scene that satisfies ``specific`` also satisfies ``general``.

    A non-exclusive caption is entailed when its descriptions map injectively onto descriptions of ``specific``
    that contain them; an exclusive (full-scene) caption is entailed only by an exclusive caption describing the
    same objects.
    """
    if general.exclusive:
        return specific.exclusive and sorted(specific.descriptions) == sorted(general.descriptions)
    return _injective_match(general.descriptions, specific.descriptions,
                            lambda spec, desc: set(desc) <= set(spec))


def entailment_matrix(captions: Sequence[Caption]) -> np.ndarray:
    """Bool array ``[N, N]``: entry (i, j) is whether caption i entails caption j (the diagonal is True)."""
    n = len(captions)
    return np.array([[entails(captions[i], captions[j]) for j in range(n)] for i in range(n)], dtype=bool)


_DESCRIPTION = re.compile(
    r"^a(?: (?P<size>{}))?(?: (?P<colour>{}))? (?P<shape>{}|shape)(?: at the (?P<position>{}))?$".format(
        "|".join(SIZES), "|".join(COLOURS), "|".join(SHAPES), "|".join(POSITIONS)
    )
)


def parse_caption(text: str) -> Caption:
    """The ``Caption`` written as ``text`` (inverse of the caption texts of this module); ``ValueError`` if the text
    is not a caption of this world."""
    body, exclusive = text.strip().lower(), False
    if body.startswith("only "):
        body, exclusive = body[5:], True
    parts = body.split(" and ") if exclusive else [body]
    descriptions = []
    for part in parts:
        m = _DESCRIPTION.match(part)
        if m is None:
            raise ValueError(f"{text!r} is not a caption of the synthetic world (e.g. 'a large red circle at the "
                             "top left', 'only a red circle at the top left and ...')")
        values = {k: v for k, v in m.groupdict().items() if v is not None and not (k == "shape" and v == "shape")}
        descriptions.append(tuple((a, values[a]) for a in ATTRIBUTES if a in values))
    if exclusive and any(len(d) != len(ATTRIBUTES) for d in descriptions):
        raise ValueError(f"{text!r}: a full-scene ('only ...') caption must give every attribute of every object")
    level = FULL_SCENE_LEVEL if exclusive else len(descriptions[0])
    return _caption(descriptions, exclusive, level)


def phrase_view(text: str, rng: random.Random) -> str | None:
    """A strictly more general caption of the caption ``text``, made by dropping whole phrases: the attributes of
    one of its objects (drawn with ``rng``), each kept with probability 1/2 (at least one dropped unless ``text`` is
    a full-scene caption, which any one object's description generalises). None for "a shape" (nothing is more
    general) and for a text that is not a caption of this world.

    Unlike dropping single words, the view is always a caption of the world: "only a small red circle at the top
    left and ..." may give "a red circle" or "a small shape at the top left", never "a red at the and".
    """
    try:
        caption = parse_caption(text)
    except ValueError:
        return None
    description = caption.descriptions[rng.randrange(len(caption.descriptions))]
    kept = [pair for pair in description if rng.random() < 0.5]
    if not caption.exclusive and len(kept) == len(description):
        if not description:
            return None
        kept.pop(rng.randrange(len(kept)))
    return _caption([tuple(kept)], False, len(kept)).text


def world_vocabulary() -> list[str]:
    """Every word of every caption of this world (for a word-level tokenizer), in a fixed order."""
    words = ["a", "only", "and", "at", "the", "shape", *SIZES, *COLOURS, *SHAPES]
    for position in POSITIONS:
        words.extend(w for w in position.split() if w not in words)
    return words


# ------------------------------------------------------------------------------------------------ dataset
class SyntheticDataset:
    """Indexed, seeded dataset of the synthetic world: ``dataset[i]`` is the same item on every call.

    Items are dicts ``{"image": PIL.Image (RGB, image_size px), "captions": list[str] (one per entry of levels),
    "levels": list[int], "scene": dict, "degradation": int}``.

    Args:
        seed: world seed (item i is drawn from a generator seeded by (seed, split, i)).
        split: ``train`` / ``test`` / ``test_heldout`` (see the module docstring).
        size: number of items (the world is generated on the fly; a large size costs nothing).
        levels: caption levels listed per item (one caption each; the training loop draws one per step).
        max_objects: objects per scene, 1 .. max_objects.
        degradation_probs: probabilities of degradation levels 0..4 (length 5, sums to 1).
        degradation_kind: ``noise`` / ``blur`` / ``occlusion``.
        image_size: output pixels (the world is defined at 32 px).
    """

    def __init__(self, seed: int = 0, split: str = "train", size: int = 100_000,
                 levels: Sequence[int] = tuple(range(NUM_LEVELS)), max_objects: int = 2,
                 degradation_probs: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 0.0), degradation_kind: str = "noise",
                 image_size: int = IMAGE_SIZE):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer; got {size!r}")
        bad_levels = [lv for lv in levels if not (isinstance(lv, int) and 0 <= lv < NUM_LEVELS)]
        if not levels or bad_levels:
            raise ValueError(f"levels must be a non-empty list of integers in 0..{NUM_LEVELS - 1}; got {list(levels)}")
        probs = np.asarray(degradation_probs, dtype=np.float64)
        if probs.shape != (DEGRADATION_LEVELS,) or (probs < 0).any() or abs(probs.sum() - 1) > 1e-6:
            raise ValueError(f"degradation_probs must be {DEGRADATION_LEVELS} non-negative numbers summing to 1; "
                             f"got {list(degradation_probs)}")
        _check_degradation(0, degradation_kind)
        self.seed, self.split, self.size = int(seed), split, size
        self.levels, self.max_objects = [int(lv) for lv in levels], max_objects
        self.degradation_probs, self.degradation_kind = probs / probs.sum(), degradation_kind
        self.image_size = image_size

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> Scene:
        """The scene of item ``index`` (without rendering)."""
        return self._scene_and_rng(index)[0]

    def _scene_and_rng(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a synthetic dataset of {self.size} items")
        rng = _rng(self.seed, _SPLIT_CODES[self.split], index)
        degradation = int(rng.choice(DEGRADATION_LEVELS, p=self.degradation_probs))
        return sample_scene(rng, self.split, self.max_objects, degradation, self.degradation_kind), rng

    def __getitem__(self, index: int) -> dict:
        scene, rng = self._scene_and_rng(int(index))
        captions = sample_captions(scene, rng, self.levels)
        return {
            "image": render_scene(scene, self.image_size),
            "captions": [c.text for c in captions],
            "levels": [c.level for c in captions],
            "scene": scene.to_dict(),
            "degradation": scene.degradation,
        }

    def __iter__(self) -> Iterator[dict]:
        for index in range(self.size):
            yield self[index]
