"""Datasets (folder / zip), identity-disjoint deterministic splits, and `gaze dataset build`."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze import GazeError
from machinegaze.data import ImageDataset, group_key, parse_splits, split_of
from machinegaze.dataset import BuildConfig, build_dataset, parse_source
from tests.helpers import single_thread

one_thread = pytest.fixture(single_thread, scope="module", autouse=True)  # MTCNN's tiny ops crawl with 2 threads


@pytest.fixture(scope="module")
def real(faces_dir):
    return faces_dir


@pytest.fixture
def mixed(tmp_path, real):
    """A small messy source: faces, a grey ORL face, a duplicate, a corrupt file, a text file, a no-face image."""
    src = tmp_path / "mix"
    (src / "s3").mkdir(parents=True)
    for n in ("00000.jpg", "00001.jpg"):
        shutil.copy(real / "ffhq256" / n, src / n)
    shutil.copy(real / "lfw" / "Aaron_Peirsol_0001.jpg", src / "Aaron_Peirsol_0001.jpg")
    shutil.copy(real / "lfw" / "Aaron_Peirsol_0001.jpg", src / "copy_of_aaron.jpg")  # byte-identical
    shutil.copy(real / "orl" / "s3" / "1.pgm", src / "s3" / "1.pgm")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (src / "README.txt").write_text("hello")
    Image.new("RGB", (120, 90), (10, 200, 40)).save(src / "green.png")
    return src


# ---------------------------------------------------------------- groups and splits
def test_group_keys():
    assert group_key("lfw/George_W_Bush_0012.jpg") == "lfw:George_W_Bush"
    assert group_key("Abdel_Aziz_Al-Hakim_0001.jpg") == "lfw:Abdel_Aziz_Al-Hakim"
    assert group_key("lfw/Zico_0003.jpg") == "lfw:Zico" and group_key("Zico_0003.jpg") == "file:Zico_0003"
    assert group_key("orl/s17/3.pgm") == "orl:s17"
    assert group_key("ffhq256/00042.jpg") == group_key("ffhq1024/42.jpg") == "ffhq:42"
    assert group_key("utkface/26_0_1_2017.jpg.chip.jpg") == "file:utkface/26_0_1_2017.jpg.chip"
    assert group_key("photos/IMG_0001.JPG") != group_key("photos/IMG_0002.JPG")  # camera names are not identities
    assert group_key("other/00042.jpg") == "file:other/00042"


def test_split_of_is_deterministic_and_follows_fractions():
    keys = [f"k{i}" for i in range(4000)]
    a = [split_of(k) for k in keys]
    assert a == [split_of(k) for k in keys]
    assert 0.07 < a.count("test") / len(a) < 0.13
    three = {"train": 0.8, "val": 0.1, "test": 0.1}
    assert set(split_of(k, three) for k in keys) == set(three)
    assert [split_of(k, salt="other") for k in keys] != a
    assert parse_splits("train=0.8,val=0.2") == {"train": 0.8, "val": 0.2}
    for bad in ("train=0.8", "train=x,test=1", "train"):
        with pytest.raises(GazeError):
            parse_splits(bad)


@pytest.mark.parametrize("folder", ["lfw", "orl"])
def test_splits_are_identity_disjoint_on_real_folders(real, folder):
    ds = ImageDataset(real / folder, resolution=32)
    fr = {"train": 0.7, "test": 0.3}
    train, test = ds.split("train", fr), ds.split("test", fr)
    assert len(train) + len(test) == len(ds) and len(test) > 0 and len(train) > 0
    assert not set(train.names) & set(test.names)
    ids = lambda d: {d.group(i) for i in range(len(d.names))}  # noqa: E731
    assert not ids(train) & ids(test)
    assert train.names == ImageDataset(real / folder, resolution=32).split("train", fr).names  # deterministic
    if folder == "lfw":
        assert len(ids(ds)) < len(ds)  # several photos per identity exist, and stay together
    else:
        assert len(ids(ds)) == 40


# ---------------------------------------------------------------- datasets
def test_folder_dataset_items_xflip_and_labels(tmp_path, real):
    src = tmp_path / "utk"
    src.mkdir()
    names = sorted(p.name for p in (real / "utkface").glob("*.jpg"))[:4]
    for n in names:
        shutil.copy(real / "utkface" / n, src / n)
    ds = ImageDataset(src, resolution=24, xflip=True, labels=real / "utkface" / "labels.csv", label_column="gender")
    assert len(ds) == 8
    x, y = ds[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    xf, yf = ds[4]
    assert torch.equal(xf, x.flip(-1)) and yf == y
    assert ds.classes == sorted(set(ds.classes)) and set(ds.classes) <= {"female", "male"}
    ages = ImageDataset(src, resolution=24, labels=real / "utkface" / "labels.csv", label_column="age")
    assert ages.labels.dtype == torch.float32 and ages.labels.tolist() == [float(n.split("_")[0]) for n in names]
    with pytest.raises(GazeError, match="no label column"):
        ImageDataset(src, labels=real / "utkface" / "labels.csv", label_column="nope")
    unlabelled = ImageDataset(src)
    assert unlabelled.resolution == 200 and unlabelled[0][1].item() == -1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[0].shape == (3, 3, 24, 24)


def test_build_zip_round_trip_with_manifest_and_counts(tmp_path, mixed):
    out = tmp_path / "faces32.zip"
    events = []
    rep = build_dataset([("mix", mixed)], out, BuildConfig(size=32), progress=events.append)
    c = rep.counts["mix"]
    assert c["files"] == 8 and c["written"] == 5  # 2 ffhq + lfw + orl + green
    assert (c["corrupt"], c["not_image"], c["duplicate"], c["grey"]) == (1, 1, 1, 1)
    assert events[-1].step == events[-1].total == 8
    with zipfile.ZipFile(out) as z:
        man = json.loads(z.read("manifest.json"))
        assert sorted(z.namelist()) == sorted(["manifest.json"] + [e["file"] for e in man["images"]])
    assert man["size"] == 32 and man["sources"]["mix"]["corrupt"] == 1
    e = {x["original"]: x for x in man["images"]}
    assert e["s3/1.pgm"]["file"] == "mix/s3/1.png" and e["s3/1.pgm"]["group"] == "orl:s3" and e["s3/1.pgm"]["grey"]
    assert e["Aaron_Peirsol_0001.jpg"]["group"] == "lfw:Aaron_Peirsol"
    assert all(x["license"] and x["source"] == "mix" for x in man["images"])
    assert man["rejected"]["duplicate"][0]["same_as"] == "mix/Aaron_Peirsol_0001.jpg"
    assert man["rejected"]["corrupt"][0]["original"] == "broken.png"

    ds = ImageDataset(out, xflip=True)
    assert ds.resolution == 32 and len(ds) == 10 and len(ds.names) == 5
    x, _ = ds[ds.names.index("mix/00000.png")]
    want = Image.open(mixed / "00000.jpg").convert("RGB").resize((32, 32), Image.LANCZOS)
    assert torch.equal(x, torch.from_numpy(np.array(want)).permute(2, 0, 1).float() / 127.5 - 1)
    assert ds.group(ds.names.index("mix/00000.png")) == "file:mix/00000"  # 'mix' is not an FFHQ source
    # Same inputs, same bytes: the build is deterministic.
    build_dataset([("mix", mixed)], tmp_path / "again.zip", BuildConfig(size=32))
    with zipfile.ZipFile(out) as a, zipfile.ZipFile(tmp_path / "again.zip") as b:
        assert all(a.read(n) == b.read(n) for n in a.namelist() if n.endswith(".png"))


def test_build_with_alignment_rejects_photos_without_a_face(tmp_path, mixed):
    rep = build_dataset([str(mixed)], tmp_path / "al.zip", BuildConfig(size=32, align=True))
    c = rep.counts["mix"]
    assert c["no_face"] >= 1 and c["written"] + c["no_face"] == 5 and c["written"] >= 3
    with zipfile.ZipFile(tmp_path / "al.zip") as z:
        man = json.loads(z.read("manifest.json"))
    assert {"source": "mix", "original": "green.png"} in man["rejected"]["no_face"]
    assert man["aligned"] and all(0.9 < x["score"] <= 1 and len(x["landmarks"]) == 5 for x in man["images"])
    assert ImageDataset(tmp_path / "al.zip")[0][0].shape == (3, 32, 32)


def test_build_errors_are_one_line(tmp_path, mixed):
    with pytest.raises(GazeError, match=r"\.zip"):
        build_dataset([mixed], tmp_path / "x.tar", BuildConfig())
    with pytest.raises(GazeError, match="share a name"):
        build_dataset([("a", mixed), ("a", mixed)], tmp_path / "x.zip", BuildConfig())
    with pytest.raises(GazeError, match="no such folder"):
        build_dataset([tmp_path / "missing"], tmp_path / "x.zip", BuildConfig())
    with pytest.raises(GazeError):
        BuildConfig(size=2)
    assert parse_source("faces=/tmp/x") == ("faces", __import__("pathlib").Path("/tmp/x"))
    (tmp_path / "bad.zip").write_bytes(b"PK nope")
    with pytest.raises(GazeError, match="not a readable zip"):
        ImageDataset(tmp_path / "bad.zip")


def test_cli_dataset_build_reports_counts(tmp_path, mixed):
    from typer.testing import CliRunner

    from machinegaze.cli import app

    out = tmp_path / "cli.zip"
    res = CliRunner().invoke(app, ["dataset", "build", f"mix={mixed}", "--out", str(out), "--size", "16"])
    assert res.exit_code == 0, res.output
    assert "wrote 5 images" in res.output and "broken.png" in res.output
    row = next(line for line in res.output.splitlines() if line.startswith("mix "))
    assert row.split()[1:] == ["8", "5", "0", "0", "1", "1", "1", "1"]
    info = CliRunner().invoke(app, ["dataset", "info", str(out)])
    assert info.exit_code == 0 and "5 images at 16px" in info.output
