"""Retrieval data formats (ofa.data.retrieval_formats): world round trips in every format, a hand-written
Chinese-CLIP dataset, the official LMDB builder reading what we write, conversions and clear errors."""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from ofa.data.formats import DataFormatError
from ofa.data.retrieval_formats import (
    ChineseCLIPWriter,
    convert_retrieval_dataset,
    detect_retrieval_format,
    open_retrieval_dataset,
    write_retrieval_dataset,
)
from ofa.data.world import World, WorldConfig, write_world_retrieval

WORLD = World(WorldConfig(image_size=48))
N_SCENES = 4
DESTINATIONS = {"cnclip": "train_imgs.tsv", "jsonl": "pairs.jsonl", "csv": "pairs.csv", "wds": "shards"}


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------ world round trips


@pytest.mark.parametrize("fmt", list(DESTINATIONS))
def test_world_scenes_round_trip(tmp_path: Path, fmt: str):
    options = {"shard_size": 3} if fmt == "wds" else {}  # two shards, so the reader crosses a shard boundary
    dst = tmp_path / DESTINATIONS[fmt]
    write_world_retrieval(WORLD, dst, "train", N_SCENES, fmt, start=2, langs=("en", "zh"), **options)
    if fmt == "wds":
        assert sorted(p.name for p in dst.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]

    samples = list(open_retrieval_dataset(dst))
    assert [s["image_id"] for s in samples] == [2, 3, 4, 5]
    text_id = 0
    for sample in samples:
        scene = WORLD.scene("train", sample["image_id"])  # the truth: the world renders it again
        assert sample["image"].size == scene.image.size and sample["image"].format == "PNG"
        assert np.array_equal(pixels(sample["image"]), pixels(scene.image))
        assert sample["texts"] == scene.captions["en"] + scene.captions["zh"]
        assert sample["text_ids"] == list(range(text_id, text_id + len(sample["texts"])))
        text_id += len(sample["texts"])


def test_world_chinese_captions_only(tmp_path: Path):
    write_world_retrieval(WORLD, tmp_path / "val_imgs.tsv", "val", 2)
    texts = [
        json.loads(line) for line in (tmp_path / "val_texts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    expected = [(c, i) for i in range(2) for c in WORLD.scene("val", i).captions["zh"]]
    assert [(t["text"], t["image_ids"][0]) for t in texts] == expected
    assert [t["text_id"] for t in texts] == list(range(len(expected)))
    with pytest.raises(ValueError, match="unknown caption languages"):
        write_world_retrieval(WORLD, tmp_path / "x_imgs.tsv", "val", 1, langs=("fr",))


class _NoGlobals(pickle.Unpickler):
    """The official LMDB stores pickled (image_id, text_id, text) tuples; allow nothing beyond plain data."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def test_official_lmdb_builder_reads_our_cnclip_files(tmp_path: Path):
    pytest.importorskip("cn_clip")
    lmdb = pytest.importorskip("lmdb")
    write_world_retrieval(WORLD, tmp_path / "train_imgs.tsv", "train", 3, langs=("zh",))
    subprocess.run(
        [sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset", "--data_dir", str(tmp_path)]
        + ["--splits", "train"],
        check=True,
        capture_output=True,
    )
    with lmdb.open(str(tmp_path / "lmdb/train/imgs"), readonly=True, lock=False) as env, env.begin() as txn:
        assert txn.get(b"num_images") == b"3"
        for index in range(3):
            # decoded exactly as cn_clip.training.data.LMDBDataset does
            image = Image.open(io.BytesIO(base64.urlsafe_b64decode(txn.get(str(index).encode()).decode())))
            assert np.array_equal(pixels(image), pixels(WORLD.scene("train", index).image))
    with lmdb.open(str(tmp_path / "lmdb/train/pairs"), readonly=True, lock=False) as env, env.begin() as txn:
        count = int(txn.get(b"num_samples"))
        pairs = [_NoGlobals(io.BytesIO(txn.get(str(i).encode()))).load() for i in range(count)]
    expected = [(i, c) for i in range(3) for c in WORLD.scene("train", i).captions["zh"]]
    assert [(image_id, text) for image_id, _, text in pairs] == expected
    assert [text_id for _, text_id, _ in pairs] == list(range(len(expected)))


# ------------------------------------------------------------------------------ hand-written Chinese-CLIP data


def png_with_dash_or_underscore(image: Image.Image) -> bytes:
    """A PNG of `image` padded with a text chunk until its url-safe base64 contains '-' or '_', so that the
    url-safe alphabet, which the official reader accepts, is really exercised."""
    for n in range(64):
        info = PngImagePlugin.PngInfo()
        info.add_text("pad", "x" * n)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        if set(base64.urlsafe_b64encode(buffer.getvalue())) & set(b"-_"):
            return buffer.getvalue()
    raise AssertionError("no padding gave a '-' or '_'")


def hand_written_images() -> dict[int, bytes]:
    """Three small images of known pixels: a PNG, a JPEG and a grayscale PNG."""
    red = Image.new("RGB", (6, 4), (255, 0, 0))
    blue = Image.new("RGB", (5, 5), (0, 0, 255))
    grey = Image.new("L", (3, 7), 128)
    return {101: png_with_dash_or_underscore(red), 102: encode(blue, "JPEG"), 103: encode(grey)}


@pytest.fixture
def cnclip_dir(tmp_path: Path) -> Path:
    images = hand_written_images()
    lines = [
        f"101\t{base64.urlsafe_b64encode(images[101]).decode()}",
        f"102\t{base64.b64encode(images[102]).decode()}",
        f"103\t{base64.b64encode(images[103]).decode()}",
    ]
    (tmp_path / "valid_imgs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = [
        '{"text_id": 7, "text": "红色和蓝色", "image_ids": [101, 102]}',
        '{"text_id": 8, "text": "一个红色的长方形", "image_ids": [101]}',
        '{"text_id": 9, "text": "灰色", "image_ids": []}',
    ]
    (tmp_path / "valid_texts.jsonl").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return tmp_path


def test_hand_written_cnclip_many_to_many(cnclip_dir: Path):
    reader = open_retrieval_dataset(cnclip_dir / "valid_texts.jsonl")  # either file names the dataset
    samples = list(reader)
    assert [(s["image_id"], s["texts"], s["text_ids"]) for s in samples] == [
        (101, ["红色和蓝色", "一个红色的长方形"], [7, 8]),
        (102, ["红色和蓝色"], [7]),
        (103, [], []),
    ]
    red, blue, grey = (s["image"] for s in samples)
    assert red.size == (6, 4) and (pixels(red) == [255, 0, 0]).all()
    assert blue.format == "JPEG" and samples[1]["image_bytes"] == hand_written_images()[102]
    assert grey.mode == "L" and (np.asarray(grey) == 128).all()
    assert [r[1:] for r in reader.text_records()] == [
        (7, "红色和蓝色", [101, 102]),
        (8, "一个红色的长方形", [101]),
        (9, "灰色", []),
    ]


def test_cnclip_random_access_by_byte_offset(cnclip_dir: Path):
    reader = open_retrieval_dataset(cnclip_dir / "valid_imgs.tsv")
    assert len(reader) == 3 and reader.image_ids == [101, 102, 103]
    assert reader[2]["image_id"] == 103 and reader[-3]["texts"] == ["红色和蓝色", "一个红色的长方形"]
    assert reader.get(102)["image_bytes"] == hand_written_images()[102]
    clone = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker receives: no open file handle
    assert clone.get("101")["text_ids"] == [7, 8]
    with pytest.raises(KeyError, match="no image 104"):
        reader.get(104)
    with pytest.raises(IndexError):
        reader[3]


def test_conversions_keep_bytes_and_many_to_many(cnclip_dir: Path, tmp_path: Path):
    original = cnclip_dir / "valid_imgs.tsv"
    convert_retrieval_dataset(original, tmp_path / "wds", "wds", shard_size=2)
    convert_retrieval_dataset(tmp_path / "wds", tmp_path / "pairs.csv", "csv")
    convert_retrieval_dataset(tmp_path / "pairs.csv", tmp_path / "pairs.jsonl", "jsonl")
    convert_retrieval_dataset(tmp_path / "pairs.jsonl", tmp_path / "out" / "valid_imgs.tsv", "cnclip")
    back = list(open_retrieval_dataset(tmp_path / "out" / "valid_imgs.tsv"))
    assert [s["image_bytes"] for s in back] == list(hand_written_images().values())  # never re-encoded
    records = [json.loads(line) for line in (tmp_path / "out" / "valid_texts.jsonl").read_text().splitlines()]
    # text 9 has no image, so no image-centric sample carries it (documented)
    assert records == [
        {"text_id": 7, "text": "红色和蓝色", "image_ids": [101, 102]},
        {"text_id": 8, "text": "一个红色的长方形", "image_ids": [101]},
    ]
    rows = (tmp_path / "pairs.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "image,text,image_id,text_id" and rows[-1] == "pairs_images/00000002.png,,103,"
    with pytest.raises(ValueError, match="onto itself"):
        convert_retrieval_dataset(tmp_path / "pairs.csv", tmp_path / "pairs.csv", "csv")


# ------------------------------------------------------------------------------ pairs files


def test_pairs_jsonl_and_csv_grouping_and_default_ids(tmp_path: Path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(encode(Image.new("RGB", (2, 2), (1, 2, 3))))
    (tmp_path / "img" / "b.jpg").write_bytes(encode(Image.new("RGB", (3, 3), (9, 9, 9)), "JPEG"))
    rows = [
        {"image": "img/a.png", "text": "first"},
        {"image": "img/a.png", "text": "second, with a comma"},
        {"image": "img/b.jpg"},
        {"image": "img/a.png", "text": "third"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv_text = 'image,text\nimg/a.png,first\nimg/a.png,"second, with a comma"\nimg/b.jpg,\nimg/a.png,third\n'
    (tmp_path / "d.csv").write_text(csv_text)
    for name in ("d.jsonl", "d.csv"):
        samples = list(open_retrieval_dataset(tmp_path / name))
        assert [(s["image_id"], s["texts"], s["text_ids"]) for s in samples] == [
            (0, ["first", "second, with a comma"], [0, 1]),
            (1, [], []),
            (2, ["third"], [2]),
        ]
        assert samples[1]["image"].format == "JPEG" and samples[2]["image"].getpixel((0, 0)) == (1, 2, 3)


# ------------------------------------------------------------------------------ clear errors


def write_cnclip(folder: Path, imgs: list[str], texts: list[str]) -> Path:
    (folder / "t_imgs.tsv").write_text("".join(line + "\n" for line in imgs), encoding="utf-8")
    (folder / "t_texts.jsonl").write_text("".join(line + "\n" for line in texts), encoding="utf-8")
    return folder / "t_imgs.tsv"


PNG_B64 = base64.b64encode(encode(Image.new("RGB", (2, 2)))).decode()


@pytest.mark.parametrize(
    ("imgs", "texts", "message"),
    [
        (
            [f"1\t{PNG_B64}", f"2\tx\t{PNG_B64}"],
            [],
            r"t_imgs.tsv, line 2: expected 'image_id<TAB>base64 image', found 3",
        ),
        ([f"1\t{PNG_B64}", "2"], [], r"t_imgs.tsv, line 2: expected 'image_id<TAB>base64 image', found 1"),
        (
            [f"1\t{PNG_B64}", "2\tiVBOR$$w0KGgo="],
            [],
            r"t_imgs.tsv, line 2 \(image 2\): image is not valid base64",
        ),
        (["1\taGVsbG8gd29ybGQ="], [], r"t_imgs.tsv, line 1 \(image 1\): not a readable image"),
        (
            [f"1\t{PNG_B64[:60]}"],
            [],
            r"t_imgs.tsv, line 1 \(image 1\): not a readable image",
        ),  # truncated PNG
        ([f"1\t{PNG_B64}", f"1\t{PNG_B64}"], [], r"t_imgs.tsv, line 2: image id 1 appears a second time"),
        (
            [f"1\t{PNG_B64}"],
            ['{"text_id": 1, "text": "a", "image_ids": [1]}', "{oops"],
            r"t_texts.jsonl, line 2: not",
        ),
        (
            [f"1\t{PNG_B64}"],
            ['{"text_id": 1, "image_ids": [1]}'],
            r"t_texts.jsonl, line 1: expected \{'text_id'",
        ),
        (
            [f"1\t{PNG_B64}"],
            ['{"text_id": 1, "text": "a", "image_ids": 1}'],
            r"line 1: image_ids must be a list",
        ),
        (
            [f"1\t{PNG_B64}"],
            [
                '{"text_id": 5, "text": "a", "image_ids": [1]}',
                '{"text_id": 6, "text": "b", "image_ids": [1, 2]}',
            ],
            r"t_texts.jsonl, line 2: text 6 is paired with image 2, which .*t_imgs.tsv does not contain",
        ),
    ],
)
def test_cnclip_errors_name_file_and_line(tmp_path: Path, imgs: list[str], texts: list[str], message: str):
    path = write_cnclip(tmp_path, imgs, texts)
    with pytest.raises(DataFormatError, match=message):
        list(open_retrieval_dataset(path))


def test_decode_false_defers_pixel_errors(tmp_path: Path):
    path = write_cnclip(tmp_path, [f"1\t{PNG_B64[:60]}"], [])
    assert len(list(open_retrieval_dataset(path, decode=False))) == 1  # header is intact: converting works


def test_random_access_reports_bad_lines_too(tmp_path: Path):
    path = write_cnclip(tmp_path, [f"1\t{PNG_B64}", "2\t@@@"], [])
    reader = open_retrieval_dataset(path)
    assert reader[0]["image_id"] == 1
    with pytest.raises(DataFormatError, match=r"line 2 \(image 2\): image is not valid base64"):
        reader[1]


def test_pairs_errors(tmp_path: Path):
    (tmp_path / "ok.png").write_bytes(encode(Image.new("RGB", (2, 2))))
    (tmp_path / "missing.jsonl").write_text(
        '{"image": "ok.png", "text": "a"}\n{"image": "nope.png", "text": "b"}\n'
    )
    with pytest.raises(DataFormatError, match=r"missing.jsonl, line 2: image file .*nope.png not found"):
        list(open_retrieval_dataset(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text(
        '{"image": "ok.png", "text": "a"}\n\n{"image": "ok.png", "text": 3}\n'
    )
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 3: text must be a string"):
        list(open_retrieval_dataset(tmp_path / "bad.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"image": "ok.png"\n')
    with pytest.raises(DataFormatError, match=r"broken.jsonl, line 1: not a JSON object"):
        list(open_retrieval_dataset(tmp_path / "broken.jsonl"))
    (tmp_path / "header.csv").write_text("path,caption\nok.png,a\n")
    with pytest.raises(
        DataFormatError, match=re.escape("header.csv, line 1: the header lacks column(s) ['image', 'text']")
    ):
        list(open_retrieval_dataset(tmp_path / "header.csv"))
    (tmp_path / "fields.csv").write_text("image,text\nok.png,a\nok.png,b,c\n")
    with pytest.raises(DataFormatError, match=r"fields.csv, line 3: expected 2 fields"):
        list(open_retrieval_dataset(tmp_path / "fields.csv"))


def test_webdataset_errors(tmp_path: Path):
    (tmp_path / "not_a_tar.tar").write_bytes(b"plain text, not a tar archive" * 40)
    with pytest.raises(DataFormatError, match=r"not_a_tar.tar: not a readable tar shard"):
        list(open_retrieval_dataset(tmp_path / "not_a_tar.tar"))
    with tarfile.open(tmp_path / "no_image.tar", "w") as tar:
        data = b'{"texts": ["a"]}'
        info = tarfile.TarInfo("k1.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataFormatError, match=r"no_image.tar, sample k1: no image member"):
        list(open_retrieval_dataset(tmp_path / "no_image.tar"))
    (tmp_path / "part-000000.tar").write_bytes((tmp_path / "no_image.tar").read_bytes())
    with pytest.raises(DataFormatError, match=r"part-000001.tar: no such shard"):
        open_retrieval_dataset(str(tmp_path / "part-{000000..000001}.tar"))


def test_webdataset_txt_only_shard(tmp_path: Path):
    """img2dataset/open_clip-style shards: one caption in .txt, the key as id."""
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in [
            ("00042.jpg", encode(Image.new("RGB", (4, 4)), "JPEG")),
            ("00042.txt", "一只猫\n".encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (sample,) = open_retrieval_dataset(tmp_path / "s.tar")
    assert (sample["image_id"], sample["texts"], sample["text_ids"]) == ("00042", ["一只猫"], [0])


def test_writer_and_format_errors(tmp_path: Path):
    sample = {"image": Image.new("RGB", (2, 2)), "image_id": "a.png", "texts": ["x"], "text_ids": [0]}
    with pytest.raises(ValueError, match="Chinese-CLIP image ids are integers"):
        write_retrieval_dataset([sample], tmp_path / "x_imgs.tsv", "cnclip")
    with pytest.raises(ValueError, match="text id 0 has two texts"):
        with ChineseCLIPWriter(tmp_path / "y_imgs.tsv") as writer:
            writer.write({**sample, "image_id": 1})
            writer.write({**sample, "image_id": 2, "texts": ["other"]})
    with pytest.raises(ValueError, match=r"text_ids must be 1 ids"):
        write_retrieval_dataset([{**sample, "text_ids": []}], tmp_path / "p.jsonl", "jsonl")
    with pytest.raises(ValueError, match="already holds .tar shards"):
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "old.tar").write_bytes(b"")
        write_retrieval_dataset([], tmp_path / "w", "wds")
    with pytest.raises(DataFormatError, match="cannot tell the retrieval format"):
        detect_retrieval_format(tmp_path / "data.parquet")
    with pytest.raises(DataFormatError, match=r"named '\{split\}_imgs.tsv'"):
        write_retrieval_dataset([], tmp_path / "imgs.tsv", "cnclip")
