"""Tiny on-disk fixtures in each benchmark layout, and small colour-world models for the eval tests.

The colour world: an image is a noisy solid colour; the words "red", "green" and "blue" point along
the first three embedding axes and an image's mean colour maps to the same axes, so a correct
pipeline classifies and retrieves perfectly, and a wrong label or caption alignment shows at once.
Image uncertainty grows with the pixel noise.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from probclip.embedding import ProbEmbedding
from probclip.eval.encode import DeterministicCLIP, EvalModel

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (25, 30, 210)}
DIM = 8
VOCAB = 1000
PAD_ID = VOCAB  # one row past the vocabulary, always zero


class WordTokenizer:
    """Lower-case words -> ids (colours 0..2, others hashed), padded to ``context_length``."""

    def __init__(self, context_length: int = 16):
        self.context_length = context_length
        self.pad_id = PAD_ID
        self.mask_id = None

    def word_id(self, word: str) -> int:
        if word in COLOURS:
            return list(COLOURS).index(word)
        return 3 + zlib.crc32(word.encode()) % (VOCAB - 3)

    def __call__(self, texts):
        out = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for i, text in enumerate(texts):
            words = "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()
            ids = [self.word_id(w) for w in words][: self.context_length]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class ColourModel(nn.Module):
    """A probabilistic stand-in with the probclip encoder API (ProbEmbedding outputs)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        table = torch.zeros(VOCAB + 1, DIM)
        table[:3, :3] = torch.eye(3)
        table[3:VOCAB, 3:] = 0.1 * torch.randn(VOCAB - 3, DIM - 3, generator=g)
        self.words = nn.Embedding.from_pretrained(table, freeze=True)

    def encode_image(self, images: torch.Tensor) -> ProbEmbedding:
        rgb = images.mean(dim=(2, 3))
        mean = torch.cat([rgb, torch.full((images.shape[0], DIM - 3), 0.05)], dim=1)
        noise = images.std(dim=(2, 3)).mean(1, keepdim=True)
        logvar = torch.log(0.01 + noise).expand(-1, DIM).contiguous()
        return ProbEmbedding(nn.functional.normalize(mean, dim=-1), logvar)

    def encode_text(self, tokens: torch.Tensor) -> ProbEmbedding:
        valid = (tokens != PAD_ID).float()
        summed = (self.words(tokens) * valid[..., None]).sum(1)
        n_words = valid.sum(1, keepdim=True).clamp_min(1)
        mean = nn.functional.normalize(summed + 1e-4, dim=-1)
        logvar = torch.log(0.05 / n_words).expand(-1, DIM).contiguous()
        return ProbEmbedding(mean, logvar)


def preprocess():
    return transforms.Compose([transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor()])


def colour_eval_model() -> EvalModel:
    return EvalModel(ColourModel(), preprocess(), WordTokenizer(), name="colour-world")


def open_clip_eval_model() -> EvalModel:
    """A tiny random-weight open_clip CLIP, wrapped as a deterministic model."""
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=4, image_size=8),
        text_cfg=open_clip.CLIPTextCfg(context_length=16, vocab_size=VOCAB + 1, width=32, heads=2, layers=1),
    )
    return EvalModel(DeterministicCLIP(clip).eval(), preprocess(), WordTokenizer(), name="open_clip:tiny")


# ----------------------------------------------------------------------------- image files
def image_bytes(colour: str, noise: float, seed: int, fmt: str = "PNG", size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], dtype=np.float64)
    pixels = base + noise * rng.standard_normal((size, size, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, colour: str, noise: float, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    path.write_bytes(image_bytes(colour, noise, seed, fmt))
    return path


def _noise(i: int) -> float:
    return 2.0 + 6.0 * (i % 5)


def build_image_folder(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    for c, colour in enumerate(COLOURS):
        for i in range(per_class):
            write_image(root / colour / f"{colour}_{i}.png", colour, _noise(i), seed * 1000 + c * 100 + i)
    return root


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_wds_classification(root: Path, split: str = "test", per_class: int = 4, n_shards: int = 2) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(COLOURS) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na {c} thing.\n")
    samples = [(c, colour, i) for c, colour in enumerate(COLOURS) for i in range(per_class)]
    for shard in range(n_shards):
        with tarfile.open(root / split / f"{shard}.tar", "w") as tar:
            for n, (c, colour, i) in enumerate(samples):
                if n % n_shards != shard:
                    continue
                key = f"s{n:05d}"
                _add_member(tar, f"{key}.webp", image_bytes(colour, _noise(i), 500 + n, "WEBP"))
                _add_member(tar, f"{key}.cls", str(c).encode())
    return root


RETRIEVAL_IMAGES = [("red", 0), ("green", 1), ("blue", 2), ("red", 3), ("green", 4), ("blue", 5)]


def captions_for(colour: str, i: int) -> list[str]:
    return [f"a {colour} square", f"something {colour} number {i}", f"{colour}"]


def build_karpathy(root: Path) -> Path:
    images = []
    sentid = 0
    for i, (colour, seed) in enumerate(RETRIEVAL_IMAGES):
        write_image(root / "val2014" / f"img{i}.jpg", colour, _noise(i), seed)
        sentences = []
        for cap in captions_for(colour, i):
            sentences.append({"raw": cap, "sentid": sentid, "imgid": i, "tokens": cap.split()})
            sentid += 1
        images.append({"filepath": "val2014", "filename": f"img{i}.jpg", "split": "test", "imgid": i,
                       "cocoid": 1000 + i, "sentences": sentences})
    write_image(root / "val2014" / "train0.jpg", "red", 1.0, 99)
    images.append({"filepath": "val2014", "filename": "train0.jpg", "split": "train", "imgid": 99,
                   "sentences": [{"raw": "a red train image"}]})
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def build_retrieval_csv(root: Path) -> Path:
    lines = ["image,caption"]
    for i, (colour, seed) in enumerate(RETRIEVAL_IMAGES):
        write_image(root / "imgs" / f"{i}.png", colour, _noise(i), seed)
        lines += [f"imgs/{i}.png,{cap}" for cap in captions_for(colour, i)]
    path = root / "pairs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_wds_retrieval(root: Path, split: str = "test") -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / split / "0.tar", "w") as tar:
        for i, (colour, seed) in enumerate(RETRIEVAL_IMAGES):
            _add_member(tar, f"k{i:04d}.jpg", image_bytes(colour, _noise(i), seed, "JPEG"))
            _add_member(tar, f"k{i:04d}.txt", "\n".join(captions_for(colour, i)).encode())
    return root


def build_urban1k(root: Path) -> Path:
    for i, (colour, seed) in enumerate(RETRIEVAL_IMAGES):
        write_image(root / "image" / f"u{i}.jpg", colour, _noise(i), seed)
        long_caption = f"a picture that is mostly {colour} " + " ".join(f"detail{j}" for j in range(30))
        (root / "caption").mkdir(parents=True, exist_ok=True)
        (root / "caption" / f"u{i}.txt").write_text(long_caption + "\n")
    return root


def build_hierarcaps(tmp_path: Path) -> Path:
    rows = ["id,captions,image_url"]
    for i, colour in enumerate(list(COLOURS) * 4):
        name = f"COCO_val2014_{i:012d}.jpg"
        write_image(tmp_path / "imgs" / name, colour, 2.0 + 3 * i, i)
        chain = f"thing => {colour} thing => {colour} square thing => {colour} square thing number {i}"
        rows.append(f"{i},{chain},http://images.cocodataset.org/val2014/{name}")
    (tmp_path / "hierarcaps.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "hierarcaps.csv"


def test_word_tokenizer_pads_and_maps_colours():
    tokens = WordTokenizer(context_length=4)(["Red, blue!", "a b c d e f"])
    assert tokens[0].tolist() == [0, 2, PAD_ID, PAD_ID]
    assert (tokens[1] != PAD_ID).all()


def build_coco_eccv(root: Path) -> tuple[Path, Path, Path]:
    """The Karpathy fixture plus a COCO ``captions_val2014.json`` and a ground-truth folder in the layout of
    the ``eccv-caption`` package, for the 6 test images (COCO ids 1000..1005, caption ids 5000..5017).

    Ground truth: original = the image's own 3 captions; CxC and ECCV = every caption of the same colour
    (ECCV i2t only for the first 4 images, t2i only for every other caption). In the colour world every
    same-colour item ranks first, so ECCV mAP@R and CxC R@1 are 1 when ids are attached correctly.
    Returns ``(karpathy json, captions json, ground-truth folder)``.
    """
    karpathy = build_karpathy(root)
    annotations, owner = [], {}
    for i, (colour, _) in enumerate(RETRIEVAL_IMAGES):
        for j, cap in enumerate(captions_for(colour, i)):
            cid = 5000 + 3 * i + j
            owner[cid] = i
            # case and spacing differ from the Karpathy text, as they do in the real files
            annotations.append({"image_id": 1000 + i, "id": cid, "caption": " " + cap.capitalize() + "  "})
    annotations.append({"image_id": 2000, "id": 9000, "caption": "A red train image"})
    captions_json = root / "captions_val2014.json"
    captions_json.write_text(json.dumps({"annotations": annotations[::-1]}))
    colour_of = [c for c, _ in RETRIEVAL_IMAGES]
    same = {i: [c for c in owner if colour_of[owner[c]] == colour_of[i]] for i in range(len(RETRIEVAL_IMAGES))}
    original = {"i2t": {1000 + i: [c for c in owner if owner[c] == i] for i in range(6)},
                "t2i": {c: [1000 + owner[c]] for c in owner}}
    cxc = {"i2t": {1000 + i: same[i] for i in range(6)},
           "t2i": {c: [1000 + i for i in range(6) if colour_of[i] == colour_of[owner[c]]] for c in owner}}
    eccv = {"i2t": {1000 + i: same[i] for i in range(4)},
            "t2i": {c: cxc["t2i"][c] for c in sorted(owner)[::2]}}
    gt_dir = root / "gt"
    gt_dir.mkdir()
    for name, gt in (("original", original), ("cxc", cxc), ("eccv", eccv)):
        for direction, stem in (("i2t", "image_to_caption"), ("t2i", "caption_to_image")):
            (gt_dir / f"{name}_{stem}.json").write_text(json.dumps({str(k): v for k, v in gt[direction].items()}))
    np.save(gt_dir / "coco_test_ids.npy", np.array(sorted(owner), dtype=np.int64))
    return karpathy, captions_json, gt_dir
