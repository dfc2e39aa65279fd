"""Every benchmark reader on a tiny fixture in its real layout."""

import pytest
import torch

from probclip.eval import readers
from test_eval_fixtures import (
    COLOURS,
    RETRIEVAL_IMAGES,
    build_image_folder,
    build_karpathy,
    build_retrieval_csv,
    build_urban1k,
    build_wds_classification,
    build_wds_retrieval,
    captions_for,
)


def test_image_folder_reader(tmp_path):
    data = readers.read_image_folder(build_image_folder(tmp_path / "folder", per_class=2))
    assert data.classnames == sorted(COLOURS)  # sorted folder names: blue, green, red
    assert data.labels == [0, 0, 1, 1, 2, 2]
    assert data.templates == list(readers.DEFAULT_TEMPLATES)
    img = data.items[0].open()
    assert img.size == (8, 8) and img.mode == "RGB"
    # The blue folder's first image is blue.
    assert img.getpixel((4, 4))[2] > 150


def test_wds_classification_reader(tmp_path):
    root = build_wds_classification(tmp_path / "wds", per_class=3, n_shards=2)
    data = readers.read_classification(root)
    assert data.classnames == list(COLOURS)
    assert len(data.items) == 9 and sorted(data.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.templates == ["a photo of a {c}.", "a {c} thing."]
    for item, label in zip(data.items, data.labels):
        rgb = item.open().getpixel((4, 4))
        assert max(range(3), key=lambda k: rgb[k]) == label  # red, green, blue order
    assert all("::" in item.key for item in data.items)


def test_wds_classification_rejects_bad_label(tmp_path):
    import io
    import tarfile

    root = build_wds_classification(tmp_path / "wds", per_class=1, n_shards=1)
    with tarfile.open(root / "test" / "0.tar", "a") as tar:
        for name, payload in (("bad.png", (root / "classnames.txt").read_bytes()), ("bad.cls", b"cat")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="integer class index"):
        readers.read_classification(root)


def _check_retrieval(data, n_images=None):
    n_images = len(RETRIEVAL_IMAGES) if n_images is None else n_images
    assert len(data.items) == n_images
    assert len(data.captions) == 3 * n_images
    assert data.caption_image.tolist() == [i for i in range(n_images) for _ in range(3)]
    for i, (colour, _) in enumerate(RETRIEVAL_IMAGES):
        assert data.captions[3 * i : 3 * i + 3] == captions_for(colour, i)


def test_karpathy_reader_keeps_only_the_split(tmp_path):
    data = readers.read_retrieval(build_karpathy(tmp_path / "coco"))
    _check_retrieval(data)
    assert data.image_ids == [1000 + i for i in range(6)]
    train = readers.read_karpathy_json(tmp_path / "coco" / "dataset_coco.json", split="train")
    assert train.captions == ["a red train image"]
    with pytest.raises(ValueError, match="no image in split 'val'"):
        readers.read_karpathy_json(tmp_path / "coco" / "dataset_coco.json", split="val")


def test_csv_and_wds_retrieval_readers(tmp_path):
    _check_retrieval(readers.read_retrieval(build_retrieval_csv(tmp_path / "csv")))
    _check_retrieval(readers.read_retrieval(build_wds_retrieval(tmp_path / "wds")))


def test_urban1k_reader_pairs_files_by_name(tmp_path):
    data = readers.read_urban1k(build_urban1k(tmp_path / "urban"))
    assert data.caption_image.tolist() == list(range(6))
    assert data.captions[1].startswith("a picture that is mostly green")
    assert data.items[1].path.name == "u1.jpg"


def test_hierarcaps_reader(tmp_path):
    from test_eval_fixtures import write_image

    write_image(tmp_path / "imgs" / "COCO_val2014_000000000001.jpg", "red", 2.0, 0)
    (tmp_path / "h.csv").write_text(
        "id,captions,image_url\n"
        "1,a thing => a red thing => a red square,http://images.cocodataset.org/val2014/COCO_val2014_000000000001.jpg\n"
    )
    data = readers.read_hierarcaps(tmp_path / "h.csv", image_root=tmp_path / "imgs")
    assert data.chains == [["a thing", "a red thing", "a red square"]]
    with pytest.raises(FileNotFoundError, match="not found"):
        readers.read_hierarcaps(tmp_path / "h.csv", image_root=tmp_path)


def test_retrieval_data_validates_alignment():
    item = readers.ImageItem("k", path=__import__("pathlib").Path(__file__))
    with pytest.raises(ValueError, match="no caption"):
        readers.RetrievalData([item, item], ["a"], torch.tensor([0]))


def test_flickr_karpathy_json_without_filepath_or_cocoid(tmp_path):
    import json

    from test_eval_fixtures import write_image

    images = []
    for i, (colour, seed) in enumerate(RETRIEVAL_IMAGES):
        write_image(tmp_path / "flickr30k-images" / f"{100 + i}.jpg", colour, 2.0, seed)
        images.append({"filename": f"{100 + i}.jpg", "split": "test", "imgid": i,
                       "sentences": [{"raw": c, "tokens": c.split(), "sentid": 3 * i + j, "imgid": i}
                                     for j, c in enumerate(captions_for(colour, i))]})
    images.append({"filename": "999.jpg", "split": "val", "imgid": 99, "sentences": [{"raw": "unused"}]})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    data = readers.read_retrieval(tmp_path / "dataset_flickr30k.json", image_root=tmp_path / "flickr30k-images")
    _check_retrieval(data)
    assert data.image_ids is None and data.caption_ids is None
    assert data.items[2].path.name == "102.jpg"
    with pytest.raises(FileNotFoundError, match="100.jpg.*does not exist"):
        readers.read_retrieval(tmp_path / "dataset_flickr30k.json")  # images are not next to the JSON


def test_wds_retrieval_with_json_captions_and_tsv(tmp_path):
    import io
    import json
    import tarfile

    from test_eval_fixtures import image_bytes

    (tmp_path / "wds" / "test").mkdir(parents=True)
    with tarfile.open(tmp_path / "wds" / "test" / "000.tar", "w") as tar:
        for i, (colour, seed) in enumerate(RETRIEVAL_IMAGES):
            caps = captions_for(colour, i)
            payload = json.dumps(caps if i % 2 else {"captions": caps, "url": "x"}).encode()
            for name, data in ((f"{i:03d}.png", image_bytes(colour, 2.0, seed)), (f"{i:03d}.json", payload)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = readers.read_retrieval(tmp_path / "wds")
    _check_retrieval(data)
    assert data.items[1].open().getpixel((4, 4))[1] > 150  # image 1 is green
    _check_retrieval(readers.read_retrieval(tmp_path / "wds" / "test" / "000.tar"))
    csv_path = build_retrieval_csv(tmp_path / "csv")
    tsv = csv_path.read_text().replace(",", "\t").replace("image\tcaption", "filepath\ttitle")
    (tmp_path / "csv" / "pairs.tsv").write_text(tsv)
    _check_retrieval(readers.read_retrieval(tmp_path / "csv" / "pairs.tsv"))
    with pytest.raises(ValueError, match="'caption', 'title'"):
        (tmp_path / "csv" / "bad.csv").write_text("image,text\nimgs/0.png,a\n")
        readers.read_retrieval(tmp_path / "csv" / "bad.csv")
