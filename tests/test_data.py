"""Data sources, the shared transform and the resumable loader (unitune.data)."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.transforms import InterpolationMode, Normalize

from unitune.data import (
    DataConfig,
    DataError,
    build_dataset,
    build_loader,
    build_transform,
    digits_split_indices,
    resolve_data_config,
)
from unitune.errors import UniTuneError

TINY = dict(pretrained=False, num_classes=5, img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)


def tiny_vit(**variant):
    return timm.create_model("vit_tiny_patch16_224", **{**TINY, **variant})


def write_png(path: Path, seed: int, size=(12, 10), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def cfg(**kw) -> DataConfig:
    return DataConfig.from_dict({"num_workers": 0, **kw}, source="cfg.yaml: data")


def replace(c: DataConfig, **kw) -> DataConfig:
    return DataConfig.from_dict({**c.to_dict(), **kw}, source="cfg.yaml: data")


def raises(fragment: str, exc=UniTuneError):
    """pytest.raises for a one-line user error containing ``fragment``."""
    return pytest.raises(exc, match=re.escape(fragment))


# ------------------------------------------------------------------------------------------ config

def test_config_defaults_and_round_trip():
    c = cfg(source="vtab", root="/data", task="cifar", classes=[3, 1])
    assert (c.batch_size, c.resize, c.augment, c.eval_batch) == (64, "squash", "none", 64)
    assert c.classes == (3, 1)
    again = DataConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c


@pytest.mark.parametrize("data, fragment", [
    ({"source": "digits", "bogus": 1}, "cfg.yaml: data.bogus: unknown key"),
    ({"root": "x"}, "cfg.yaml: data.source: missing"),
    ({"source": "mnist"}, "cfg.yaml: data.source: expected one of"),
    ({"source": "digits", "batch_size": "64"}, "cfg.yaml: data.batch_size: expected an integer >= 1, got '64'"),
    ({"source": "digits", "batch_size": True}, "cfg.yaml: data.batch_size: expected an integer"),
    ({"source": "digits", "batch_size": 0}, "cfg.yaml: data.batch_size: expected an integer >= 1"),
    ({"source": "digits", "num_workers": -1}, "cfg.yaml: data.num_workers"),
    ({"source": "digits", "val_subset": 2.5}, "cfg.yaml: data.val_subset"),
    ({"source": "digits", "resize": "stretch"}, "cfg.yaml: data.resize: expected one of ['squash', 'crop']"),
    ({"source": "digits", "augment": "mixup"}, "cfg.yaml: data.augment"),
    ({"source": "digits", "check_images": "yes"}, "cfg.yaml: data.check_images"),
    ({"source": "digits", "classes": [1, 1]}, "cfg.yaml: data.classes: duplicate class"),
    ({"source": "digits", "classes": [3, 10]}, "cfg.yaml: data.classes: digits has classes 0..9, got 10"),
    ({"source": "digits", "classes": []}, "cfg.yaml: data.classes: expected a non-empty list"),
    ({"source": "digits", "classes": "0,1"}, "cfg.yaml: data.classes: expected a non-empty list"),
    ({"source": "digits", "task": "cifar"}, "cfg.yaml: data.task: only used by source vtab / minivtab, not 'digits'"),
    ({"source": "imagefolder"}, "cfg.yaml: data.root: source 'imagefolder' needs the data folder"),
    ({"source": "vtab", "root": "/d"}, "cfg.yaml: data.task: source 'vtab' needs"),
    ({"source": "vtab", "root": 3, "task": "x"}, "cfg.yaml: data.root: expected a string"),
    ({"source": "fewshot", "root": "/d"}, "cfg.yaml: data.shots: needed to fill {shots} in train_list"),
    ({"source": "fewshot", "root": "/d", "shots": 2, "val_list": "v.{split}"},
     "cfg.yaml: data.val_list: 'v.{split}' may only use the placeholders"),
    ({"source": "imagefolder", "root": "/d", "val_fraction": 0}, "cfg.yaml: data.val_fraction: expected a number "
                                                                 "in (0, 1), got 0"),
    ({"source": "imagefolder", "root": "/d", "val_fraction": 1.0}, "cfg.yaml: data.val_fraction: expected a number "
                                                                   "in (0, 1), got 1.0"),
    ({"source": "imagefolder", "root": "/d", "val_fraction": "20%"}, "cfg.yaml: data.val_fraction: expected a finite"),
    ({"source": "vtab", "root": "/d", "task": "x", "val_fraction": 0.2},
     "cfg.yaml: data.val_fraction: only used by source imagefolder, not 'vtab'"),
    ({"source": "digits", "allow_missing_classes": True},
     "cfg.yaml: data.allow_missing_classes: only used by source imagefolder, not 'digits'"),
    ({"source": "imagefolder", "root": "/d", "allow_missing_classes": "yes"},
     "cfg.yaml: data.allow_missing_classes: expected true or false"),
])
def test_config_errors(data, fragment):
    with raises(fragment):
        DataConfig.from_dict(data, source="cfg.yaml: data")


def test_config_not_a_mapping():
    with raises("cfg.yaml: data: expected a mapping"):
        DataConfig.from_dict(["digits"], source="cfg.yaml: data")


# ------------------------------------------------------------------------------------- imagefolder

def make_imagefolder(root: Path) -> None:
    for split, classes, n in (("train", "abc", 3), ("val", "ac", 2), ("test", "bc", 1)):
        for c in classes:
            for i in range(n):
                write_png(root / split / c / f"{i}.png", hash((split, c, i)) % 1000)
    (root / "train" / "a" / "notes.txt").write_text("not an image")


def test_imagefolder(tmp_path):
    make_imagefolder(tmp_path)
    c = cfg(source="imagefolder", root=str(tmp_path), allow_missing_classes=True)
    train = build_dataset(c, "train")
    assert train.classes == ["a", "b", "c"] and train.num_classes == 3
    assert len(train) == 9 and sorted(train.targets) == [0] * 3 + [1] * 3 + [2] * 3
    val, test, trainval = (build_dataset(c, s) for s in ("val", "test", "trainval"))
    # val and test hold a subset of the classes, labelled with train's indices
    assert val.classes == train.classes and sorted(val.targets) == [0, 0, 2, 2]
    assert sorted(test.targets) == [1, 2]
    assert [p for p, _ in trainval.samples] == [p for p, _ in train.samples] + [p for p, _ in val.samples]
    x, y = train[4]
    assert x.shape == (3, 10, 12) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    path, label = train.samples[4]
    assert y == label == train.classes.index(path.parent.name)
    assert torch.equal(x, TF.to_tensor(Image.open(path).convert("RGB")))


def test_imagefolder_errors(tmp_path):
    with raises(f"cfg.yaml: data.root: folder '{tmp_path / 'nope'}' not found"):
        build_dataset(cfg(source="imagefolder", root=str(tmp_path / "nope")), "train")
    with raises(f"{tmp_path / 'train'}: folder not found"):
        build_dataset(cfg(source="imagefolder", root=str(tmp_path)), "train")
    make_imagefolder(tmp_path)
    write_png(tmp_path / "val" / "zebra" / "0.png", 1)
    c = cfg(source="imagefolder", root=str(tmp_path))
    with raises(f"{tmp_path / 'val' / 'zebra'}: class folder not in"):
        build_dataset(c, "val")
    with raises(f"{tmp_path / 'val' / 'zebra'}: class folder not in"):
        build_dataset(c, "trainval")
    shutil.rmtree(tmp_path / "test")
    with raises(f"{tmp_path / 'test'}: folder not found"):
        build_dataset(c, "test")
    shutil.rmtree(tmp_path / "val")
    for cls in "ac":
        (tmp_path / "val" / cls).mkdir(parents=True)
    with raises(f"{tmp_path / 'val'}: no images"):
        build_dataset(c, "val")


def test_split_missing_a_class_is_refused(tmp_path):
    """val/ lacks class b and test/ lacks class a (make_imagefolder): each is refused by name, in
    one line; trainval (train has every class) is not; selecting the present classes passes."""
    make_imagefolder(tmp_path)
    c = cfg(source="imagefolder", root=str(tmp_path))
    with raises(f"cfg.yaml: data: the val split ({tmp_path} [val]) has no images of class 'b' (1 of 3); add some, "
                f"or set cfg.yaml: data.allow_missing_classes: true", DataError):
        build_dataset(c, "val")
    with raises(f"the test split ({tmp_path} [test]) has no images of class 'a' (1 of 3)", DataError):
        build_dataset(c, "test")
    assert len(build_dataset(c, "trainval")) == 9 + 4
    assert build_dataset(replace(c, classes=[2, 0]), "val").targets == [1, 1, 0, 0]
    shutil.rmtree(tmp_path / "val" / "c")
    with raises("the val split", DataError) as info:
        build_dataset(c, "val")
    assert "has no images of classes 'b', 'c' (2 of 3)" in str(info.value) and "\n" not in str(info.value)
    assert len(build_dataset(replace(c, allow_missing_classes=True), "val")) == 2


def make_train_test(root: Path, counts=(("a", 10), ("b", 5), ("c", 2)), test=True) -> None:
    """An ImageFolder with train/ and test/ only: ``counts`` images per class in train/."""
    for c, n in counts:
        for i in range(n):
            write_png(root / "train" / c / f"{i}.png", hash((c, i)) % 1000)
        if test:
            write_png(root / "test" / c / "0.png", 7)


def test_val_fraction_is_stratified_disjoint_and_seeded(tmp_path):
    make_train_test(tmp_path)
    c = cfg(source="imagefolder", root=str(tmp_path), val_fraction=0.3)
    train, val = build_dataset(c, "train"), build_dataset(c, "val")
    every = sorted(str(p) for p in (tmp_path / "train").rglob("*.png"))
    names = lambda ds: [str(p) for p, _ in ds.samples]  # noqa: E731
    assert sorted(names(train) + names(val)) == every and not set(names(train)) & set(names(val))
    # Per class: round(0.3 n), at least 1 and at most n - 1 (a: 3 of 10, b: 2 of 5, c: 1 of 2).
    assert [val.targets.count(k) for k in range(3)] == [3, 2, 1]
    assert [train.targets.count(k) for k in range(3)] == [7, 3, 1]
    assert all(train.classes[t] == p.parent.name for p, t in train.samples + val.samples)
    # trainval is all of train/ (retrain trains on both halves); test is test/.
    assert sorted(str(p) for p, _ in build_dataset(c, "trainval").samples) == every
    assert len(build_dataset(c, "test")) == 3
    # The same seed draws the same split; another seed draws another one.
    assert names(build_dataset(replace(c, seed=0), "val")) == names(val)
    other = [names(build_dataset(replace(c, seed=s), "val")) for s in (1, 2, 3)]
    assert any(o != names(val) for o in other)
    for o in other:
        assert [Path(p).parent.name for p in o].count("a") == 3


def test_val_fraction_errors(tmp_path):
    make_train_test(tmp_path, counts=(("a", 3), ("b", 1)))
    c = cfg(source="imagefolder", root=str(tmp_path))
    with raises(f"{tmp_path / 'val'}: folder not found (imagefolder expects root/val/<class>/<image>, or "
                f"cfg.yaml: data.val_fraction to hold val out of train/)", DataError):
        build_dataset(c, "val")
    with raises(f"{tmp_path / 'train' / 'b'}: 1 image; data.val_fraction needs at least 2 per class", DataError):
        build_dataset(replace(c, val_fraction=0.5), "val")
    write_png(tmp_path / "val" / "a" / "0.png", 3)
    with raises(f"cfg.yaml: data.val_fraction: {tmp_path / 'val'} exists; val_fraction holds val out of train/ "
                f"only when there is no val/ folder", DataError):
        build_dataset(replace(c, val_fraction=0.5), "train")


def test_split_record_is_checked_on_rerun(tmp_path):
    """The stages record the split (fraction, seed, both file lists); a later stage that would
    draw another one (train/ changed, another seed) is refused, naming the record."""
    from unitune.data import check_split, record_split

    root, record = tmp_path / "data", tmp_path / "run" / "data_split.json"
    make_train_test(root)
    c = cfg(source="imagefolder", root=str(root), val_fraction=0.3)
    record_split(c, record)
    saved = json.loads(record.read_text())
    val = build_dataset(c, "val")
    assert saved["val"] == [p.relative_to(root / "train").as_posix() for p, _ in val.samples]
    assert (saved["val_fraction"], saved["seed"], len(saved["train"])) == (0.3, 0, 17 - 6)
    assert check_split(c, record) == saved
    with raises(f"{record}: this run split val off train/ with val_fraction 0.3 and seed 0, the config now asks "
                f"for 0.3 and seed 1"):
        check_split(replace(c, seed=1), record)
    write_png(root / "train" / "b" / "new.png", 5)
    with raises(f"{record}: {root}/train changed since this run split it (1 image added, 0 images removed, e.g. added "
                f"'b/new.png')"):
        record_split(c, record)
    assert json.loads(record.read_text()) == saved  # not overwritten
    # Without val_fraction there is nothing to record.
    record_split(replace(c, val_fraction=None, allow_missing_classes=True), tmp_path / "none.json")
    assert not (tmp_path / "none.json").exists()


def test_resize_note_once_for_images_on_disk(tmp_path, capsys):
    """A one-line note on stderr when the images on disk are not the backbone's input size: once
    per process and sizes, from the training loader; none for an evaluation loader, none when the
    sizes agree, none for generated images."""
    from unitune.data import transforms

    transforms._NOTED.clear()
    make_train_test(tmp_path / "a")
    c = cfg(source="imagefolder", root=str(tmp_path / "a"), val_fraction=0.3)
    dc = resolve_data_config(tiny_vit())  # 32 px
    train = build_dataset(c, "train", build_transform(dc, train=True, cfg=c))
    build_loader(build_dataset(c, "test", build_transform(dc, train=False, cfg=c)), c, train=False, seed=0)
    assert capsys.readouterr().err == ""
    build_loader(train, c, train=True, seed=0)
    build_loader(train, c, train=True, seed=1)
    first = train.samples[0][0]
    assert capsys.readouterr().err == (f"unitune: note: images are resized to 32x32 px, the backbone's input size "
                                       f"({first} is 12x10; data.resize: squash)\n")
    write_png(tmp_path / "b" / "train" / "x" / "0.png", 1, size=(32, 32))
    write_png(tmp_path / "b" / "train" / "y" / "0.png", 1, size=(20, 20))  # only the first image is looked at
    c32 = cfg(source="imagefolder", root=str(tmp_path / "b"), val_fraction=0.5, allow_missing_classes=True)
    build_loader(build_dataset(c32, "trainval", build_transform(dc, train=True, cfg=c32)), c32, train=True, seed=0)
    s = cfg(source="synthetic", num_classes=2, samples_per_class=2, image_size=8)
    build_loader(build_dataset(s, "train", build_transform(dc, train=True, cfg=s)), s, train=True, seed=0)
    assert capsys.readouterr().err == ""


# -------------------------------------------------------------------------------------------- vtab

VTAB_SPLITS = {"train800.txt": 8, "val200.txt": 4, "train800val200.txt": 12, "test.txt": 6}


def make_vtab(root: Path, task="cifar", num_classes=3) -> Path:
    task_dir = root / task
    for name, n in VTAB_SPLITS.items():
        lines = []
        for i in range(n):
            rel = f"images/{name[:-4]}/{i} img.png"  # a space in the path, as some data sets have
            write_png(task_dir / rel, i + 31 * n)
            lines.append(f"{rel} {i % num_classes}")
        (task_dir / name).write_text("\n".join(lines) + "\n\n")
    return task_dir


def test_vtab(tmp_path):
    task_dir = make_vtab(tmp_path)
    c = cfg(source="vtab", root=str(tmp_path), task="cifar")
    for split, name in (("train", "train800.txt"), ("val", "val200.txt"),
                        ("trainval", "train800val200.txt"), ("test", "test.txt")):
        ds = build_dataset(c, split)
        assert len(ds) == VTAB_SPLITS[name]
        assert ds.classes == ["0", "1", "2"]
        assert ds.targets == [i % 3 for i in range(len(ds))]
        assert ds.samples[1][0] == task_dir / f"images/{name[:-4]}/1 img.png"
    (task_dir / "classes.txt").write_text("cat\ndog\nemu\n")
    assert build_dataset(c, "val").classes == ["cat", "dog", "emu"]


def test_vtab_class_count_from_every_list(tmp_path):
    # label 4 appears only in test: the class count must still be 5 when building train
    task_dir = make_vtab(tmp_path)
    with open(task_dir / "test.txt", "a") as f:
        f.write("images/test/0 img.png 4\n")
    c = cfg(source="vtab", root=str(tmp_path), task="cifar")
    assert build_dataset(c, "train").num_classes == 5


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: (d / "val200.txt").unlink(), "val200.txt: list file not found"),
    (lambda d: (d / "images/train800/3 img.png").unlink(),
     "train800.txt:4: image 'images/train800/3 img.png' not found"),
    (lambda d: (d / "train800.txt").write_text("images/train800/0 img.png 0\nimages/train800/1 img.png x\n"),
     "train800.txt:2: label 'x' is not an integer"),
    (lambda d: (d / "train800.txt").write_text("images/train800/0 img.png 0\n\nimages/train800/1 img.png -1\n"),
     "train800.txt:3: label -1 is negative"),
    (lambda d: (d / "train800.txt").write_text("lonely_token\n"),
     "train800.txt:1: expected 'relative/path label'"),
    (lambda d: (d / "train800.txt").write_text("\n\n"), "train800.txt: no samples"),
    (lambda d: (d / "classes.txt").write_text("cat\ndog\n"), "train800.txt:3: label 2 out of range [0, 2)"),
    (lambda d: (d / "classes.txt").write_text("cat\n\ndog\n"), "classes.txt:2: empty class name"),
    (lambda d: (d / "classes.txt").write_text("cat\ndog\ncat\n"), "classes.txt: duplicate class name 'cat'"),
])
def test_vtab_errors(tmp_path, edit, fragment):
    task_dir = make_vtab(tmp_path)
    edit(task_dir)
    with raises(fragment, DataError):
        build_dataset(cfg(source="vtab", root=str(tmp_path), task="cifar"), "train")


def test_vtab_first_missing_image_is_named(tmp_path):
    task_dir = make_vtab(tmp_path)
    for i in (2, 4, 5):
        (task_dir / f"images/test/{i} img.png").unlink()
    c = cfg(source="vtab", root=str(tmp_path), task="cifar")
    with raises(f"{task_dir / 'test.txt'}:3: image 'images/test/2 img.png' not found"):
        build_dataset(c, "test")
    build_dataset(c, "train")  # other splits are unaffected


def test_vtab_folder_and_count_errors(tmp_path):
    make_vtab(tmp_path)
    with raises(f"{tmp_path / 'dtd'}: VTAB-1k task folder not found"):
        build_dataset(cfg(source="vtab", root=str(tmp_path), task="dtd"), "train")
    with raises(f"{tmp_path / 'cifar' / 'train800.txt'}:3: label 2 out of range [0, 2) (cfg.yaml: data.num_classes)"):
        build_dataset(cfg(source="vtab", root=str(tmp_path), task="cifar", num_classes=2), "train")
    (tmp_path / "cifar" / "classes.txt").write_text("a\nb\nc\n")
    with raises("cfg.yaml: data.num_classes: 4 disagrees with"):
        build_dataset(cfg(source="vtab", root=str(tmp_path), task="cifar", num_classes=4), "train")
    with raises("cfg.yaml: data.classes: class 3 out of range, vtab cifar [train] has 3 classes"):
        build_dataset(cfg(source="vtab", root=str(tmp_path), task="cifar", classes=[0, 3]), "train")


# ----------------------------------------------------------------------------------------- fewshot

def make_fewshot(root: Path) -> None:
    lists = {
        "annotations/train_meta.list.num_shot_2.seed_1": [("images/a/0.png", 0), ("images/a/1.png", 0),
                                                          ("images/b/0.png", 1), ("images/b/1.png", 1)],
        "annotations/train_meta.list.num_shot_1.seed_1": [("images/a/1.png", 0), ("images/b/0.png", 1)],
        "annotations/val_meta.list": [("images/a/2.png", 0), ("images/b/2.png", 1)],
        "annotations/test_meta.list": [("images/a/3.png", 0), ("images/b/3.png", 1), ("images/c/0.png", 2)],
    }
    for name, entries in lists.items():
        for rel, _ in entries:
            if not (root / rel).exists():
                write_png(root / rel, len(rel))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(f"{rel} {label}\n" for rel, label in entries))


def test_fewshot_noah_naming(tmp_path):
    make_fewshot(tmp_path)
    c = cfg(source="fewshot", root=str(tmp_path), shots=2, seed=1)
    train = build_dataset(c, "train")
    assert [str(p.relative_to(tmp_path)) for p, _ in train.samples][:2] == ["images/a/0.png", "images/a/1.png"]
    assert train.classes == ["0", "1", "2"] and train.targets == [0, 0, 1, 1]
    # trainval defaults to the k-shot train list: retraining stays in the few-shot regime
    assert build_dataset(c, "trainval").samples == train.samples
    assert len(build_dataset(c, "val")) == 2 and build_dataset(c, "test").targets == [0, 1, 2]
    one = build_dataset(cfg(source="fewshot", root=str(tmp_path), shots=1, seed=1), "train")
    assert [str(p.relative_to(tmp_path)) for p, _ in one.samples] == ["images/a/1.png", "images/b/0.png"]


def test_fewshot_custom_lists_and_errors(tmp_path):
    make_fewshot(tmp_path)
    (tmp_path / "classes.txt").write_text("ant\nbee\ncow\n")
    c = cfg(source="fewshot", root=str(tmp_path), train_list="annotations/val_meta.list",
            trainval_list="annotations/train_meta.list.num_shot_{shots}.seed_{seed}", shots=1, seed=1)
    assert build_dataset(c, "train").targets == [0, 1]
    assert build_dataset(c, "trainval").classes == ["ant", "bee", "cow"]
    with raises(f"{tmp_path / 'annotations/train_meta.list.num_shot_8.seed_0'}: list file not found"):
        build_dataset(cfg(source="fewshot", root=str(tmp_path), shots=8), "val")


# -------------------------------------------------------------------------------------- bad images

def test_corrupt_image_named_on_load_and_by_eager_check(tmp_path):
    task_dir = make_vtab(tmp_path)
    bad = task_dir / "images/train800/2 img.png"
    bad.write_bytes(b"definitely not a png")
    truncated = task_dir / "images/train800/5 img.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    c = cfg(source="vtab", root=str(tmp_path), task="cifar")
    ds = build_dataset(c, "train")  # existence is checked up front, decoding on load
    ds[1]
    with raises(f"{bad}: unreadable image", DataError):
        ds[2]
    with raises(f"{truncated}: unreadable image", DataError):
        ds[5]
    with raises(f"{bad}: unreadable image", DataError):
        build_dataset(cfg(source="vtab", root=str(tmp_path), task="cifar", check_images=True), "train")


def test_corrupt_image_in_worker_stays_one_line(tmp_path):
    task_dir = make_vtab(tmp_path)
    bad = task_dir / "images/val200/1 img.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    c = cfg(source="vtab", root=str(tmp_path), task="cifar", num_workers=1, batch_size=2)
    loader = build_loader(build_dataset(c, "val"), c, train=False, seed=0)
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value).startswith(f"{bad}: unreadable image") and "\n" not in str(info.value)


def test_grayscale_and_palette_images_become_rgb(tmp_path):
    make_imagefolder(tmp_path)
    write_png(tmp_path / "train" / "a" / "gray.png", 5, mode="L")
    Image.new("P", (12, 10), 3).save(tmp_path / "train" / "b" / "pal.png")
    ds = build_dataset(cfg(source="imagefolder", root=str(tmp_path)), "train")
    for i, (path, _) in enumerate(ds.samples):
        if path.name in ("gray.png", "pal.png"):
            assert ds[i][0].shape == (3, 10, 12)


# ------------------------------------------------------------------------------------------ digits

def test_digits_splits():
    c = cfg(source="digits")
    sizes = {s: len(build_dataset(c, s)) for s in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 1078, "val": 359, "test": 360, "trainval": 1437}
    idx = digits_split_indices()
    assert sum(len(v) for v in idx.values()) == 1797
    assert len(np.unique(np.concatenate(list(idx.values())))) == 1797  # disjoint and complete
    target = load_digits().target
    for c_ in range(10):  # stratified: 60 / 20 / 20 of each class
        n = int((target == c_).sum())
        assert int((target[idx["train"]] == c_).sum()) == round(0.6 * n)
        assert int((target[idx["val"]] == c_).sum()) == round(0.2 * n)


def test_digits_images_are_the_real_ones_and_deterministic():
    d = load_digits()
    idx = digits_split_indices()
    ds = build_dataset(cfg(source="digits"), "test")
    assert ds.classes == [str(i) for i in range(10)]
    for k in (0, 17, 359):
        img = np.asarray(ds.load(k))
        assert img.shape == (8, 8, 3) and (img[..., 0] == img[..., 2]).all()
        np.testing.assert_allclose(img[..., 0] / 255 * 16, d.images[idx["test"][k]], atol=0.04)
        assert ds.targets[k] == d.target[idx["test"][k]]
    again = build_dataset(cfg(source="digits"), "test")
    assert again.targets == ds.targets and torch.equal(again[5][0], ds[5][0])


def test_digits_class_subset_reindexed_in_given_order():
    full = build_dataset(cfg(source="digits"), "train")
    sub = build_dataset(cfg(source="digits", classes=[7, 5]), "train")
    assert sub.classes == ["7", "5"] and set(sub.targets) == {0, 1}
    assert len(sub) == full.targets.count(7) + full.targets.count(5)
    originals = [i for i, t in enumerate(full.targets) if t in (5, 7)]
    for k in (0, 3, len(sub) - 1):
        assert torch.equal(sub[k][0], full[originals[k]][0])
        assert sub.classes[sub.targets[k]] == full.classes[full.targets[originals[k]]]
    # source / target split for the demo: disjoint digits, disjoint labels spaces
    source = build_dataset(cfg(source="digits", classes=[0, 1, 2, 3, 4]), "train")
    assert set(source.classes).isdisjoint(build_dataset(cfg(source="digits", classes=[5, 6, 7, 8, 9]), "train").classes)


def test_val_subset_is_fixed():
    c = cfg(source="digits", val_subset=50)
    a, b = build_dataset(c, "val"), build_dataset(c, "val")
    assert len(a) == 50 and a.indices == b.indices and a.indices == sorted(a.indices)
    full = build_dataset(cfg(source="digits"), "val")
    assert [full.targets[i] for i in a.indices] == a.targets
    assert len(build_dataset(c, "train")) == 1078  # other splits untouched
    assert len(build_dataset(cfg(source="digits", val_subset=10_000), "val")) == 359
    other_seed = build_dataset(cfg(source="digits", val_subset=50, seed=1), "val")
    assert other_seed.indices != a.indices


# --------------------------------------------------------------------------------------- synthetic

def test_synthetic_deterministic_and_learnable():
    c = cfg(source="synthetic", num_classes=4, samples_per_class=10, image_size=16)
    train, val = build_dataset(c, "train"), build_dataset(c, "val")
    assert len(train) == 40 and train.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert len(build_dataset(c, "trainval")) == 80 and len(build_dataset(c, "test")) == 40
    x, _ = train[7]
    assert x.shape == (3, 16, 16)
    assert torch.equal(build_dataset(c, "train")[7][0], x)  # same seed, same image
    assert not torch.equal(val[7][0], x)  # other split, other noise
    assert not torch.equal(build_dataset(cfg(source="synthetic", num_classes=4, samples_per_class=10,
                                              image_size=16, seed=1), "train")[7][0], x)
    # learnable: nearest class mean on train classifies val well above chance (0.25)
    xs = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    means = torch.stack([xs[torch.tensor(train.targets) == k].mean(0) for k in range(4)])
    xv = torch.stack([val[i][0] for i in range(len(val))]).flatten(1)
    acc = (torch.cdist(xv, means).argmin(1) == torch.tensor(val.targets)).float().mean().item()
    assert acc > 0.9


# -------------------------------------------------------------------------------------- transforms

def test_data_config_uses_the_built_input_size():
    model = tiny_vit()
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 224, 224)  # timm's trap
    dc = resolve_data_config(model)
    assert dc["input_size"] == (3, 32, 32) and dc["mean"] == (0.5, 0.5, 0.5) and dc["interpolation"] == "bicubic"
    assert resolve_data_config(tiny_vit(img_size=(48, 40)))["input_size"] == (3, 48, 40)
    with raises("backbone data config.input_size: the backbone takes 1 channels"):
        resolve_data_config(tiny_vit(in_chans=1))


def _normalizes(transform):
    return [t for t in transform.transforms if isinstance(t, Normalize)]


def test_same_normalisation_and_size_in_every_stage(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                              embed_dim=64, depth=2, num_heads=4, pretrained_cfg_overlay=dict(
                                  mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)))
    dc = resolve_data_config(model)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    outputs = []
    for resize in ("squash", "crop"):
        for augment in ("none", "randaugment"):
            c = cfg(source="digits", resize=resize, augment=augment)
            for train in (True, False):
                t = build_transform(dc, train, c)
                (norm,) = _normalizes(t)
                assert torch.allclose(norm.mean, torch.tensor([0.1, 0.2, 0.3]))
                assert torch.allclose(norm.std, torch.tensor([0.4, 0.5, 0.6]))
                out = t(img)
                assert out.shape == (3, 32, 32)
                outputs.append((resize, augment, train, out))
    by = {k[:3]: k[3] for k in outputs}
    # without augmentation, training sees exactly what evaluation sees
    assert torch.equal(by["squash", "none", True], by["squash", "none", False])
    assert torch.equal(by["squash", "randaugment", False], by["squash", "none", False])
    assert not torch.equal(by["squash", "none", False], by["crop", "none", False])


def test_squash_is_a_straight_resize():
    dc = resolve_data_config(tiny_vit())
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 70, 3), dtype=np.uint8))
    out = build_transform(dc, False, cfg(source="digits"))(img)
    ref = TF.to_tensor(TF.resize(img, [32, 32], interpolation=InterpolationMode.BICUBIC))
    assert torch.allclose(out, (ref - 0.5) / 0.5, atol=1e-6)
    # crop mode resizes the short side to 32 / 0.9 and keeps the centre: a different picture
    crop = build_transform(dc, False, cfg(source="digits", resize="crop"))(img)
    ref_crop = TF.to_tensor(TF.center_crop(TF.resize(img, 35, interpolation=InterpolationMode.BICUBIC), [32, 32]))
    assert torch.allclose(crop, (ref_crop - 0.5) / 0.5, atol=1e-6)


def test_shift_augment_translates_and_flips_the_evaluation_image():
    """``augment: shift``: each training view is the evaluation view moved by at most 32 // 8 = 4
    pixels (reflect padding) and maybe mirrored; the views differ between draws; eval is untouched."""
    dc = resolve_data_config(tiny_vit())
    grid = np.zeros((32, 32, 3), np.uint8)
    grid[14, 11] = 255  # one bright pixel, off-centre so a flip shows
    img = Image.fromarray(grid)
    c = cfg(source="digits", augment="shift")
    assert torch.equal(build_transform(dc, False, c)(img), build_transform(dc, False, cfg(source="digits"))(img))
    train = build_transform(dc, True, c)
    torch.manual_seed(0)
    where = set()
    for _ in range(40):
        out = train(img)
        assert out.shape == (3, 32, 32)
        ys, xs = torch.nonzero(out[0] > 0).T.tolist()  # background is -1 after normalisation
        assert len(ys) == 1, (ys, xs)
        y, x = ys[0], xs[0]
        assert abs(y - 14) <= 4 and (abs(x - 11) <= 4 or abs(x - (31 - 11)) <= 4)
        where.add((y, x))
    assert len(where) > 5 and any(x > 16 for _, x in where) and any(x < 16 for _, x in where)

def test_data_config_survives_json(tmp_path):
    dc = resolve_data_config(tiny_vit())
    back = json.loads(json.dumps(dc))
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    c = cfg(source="digits")
    assert torch.equal(build_transform(back, False, c)(img), build_transform(dc, False, c)(img))
    del back["mean"]
    with raises("data config: missing mean"):
        build_transform(back, False, c)


# ------------------------------------------------------------------------------------------ loader

def synth(augment="randaugment", n_per_class=5, **kw):
    c = cfg(source="synthetic", num_classes=3, samples_per_class=n_per_class, image_size=16, augment=augment,
            batch_size=4, **kw)
    dc = resolve_data_config(tiny_vit(img_size=16, patch_size=8))
    return c, build_dataset(c, "train", build_transform(dc, True, c))


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_loader_is_deterministic_and_leaves_global_rng_alone():
    c, ds = synth()
    torch.manual_seed(123)
    random.seed(123)
    a = batches(build_loader(ds, c, train=True, seed=7))
    after = (torch.rand(3), random.random())
    torch.manual_seed(123)
    random.seed(123)
    expected = (torch.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and after[1] == expected[1]
    assert len(a) == 4 and [len(y) for _, y in a] == [4, 4, 4, 3]
    assert same(a, batches(build_loader(ds, c, train=True, seed=7)))
    assert not same(a, batches(build_loader(ds, c, train=True, seed=8)))
    assert not same(a, batches(build_loader(ds, c, train=True, seed=7, epoch=1)))
    # every item once per epoch
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(ds.targets)


def test_mid_epoch_resume_equals_the_tail():
    c, ds = synth()
    loader = build_loader(ds, c, train=True, seed=3)
    loader.sampler.set_epoch(2)
    full = batches(loader)
    for k in (1, 3):
        resumed = build_loader(ds, c, train=True, seed=3, epoch=2, start_batch=k)
        assert len(resumed) == len(full) - k
        assert same(batches(resumed), full[k:])
        loader.sampler.set_epoch(2, start_batch=k)
        assert same(batches(loader), full[k:])
    with pytest.raises(ValueError, match="start_batch 5 outside"):
        loader.sampler.set_epoch(2, start_batch=5)


def test_workers_give_the_same_batches():
    c, ds = synth()
    single = batches(build_loader(ds, c, train=True, seed=5, epoch=1))
    c2 = replace(c, num_workers=2)
    assert same(batches(build_loader(ds, c2, train=True, seed=5, epoch=1)), single)


def test_eval_loader_keeps_dataset_order():
    c, _ = synth()
    val = build_dataset(c, "val", build_transform(resolve_data_config(tiny_vit(img_size=16, patch_size=8)), False, c))
    ys = torch.cat([y for _, y in build_loader(val, c, train=False, seed=0)]).tolist()
    assert ys == val.targets


@pytest.mark.parametrize("world", [2, 3])
def test_sharding_matches_the_single_process_batches(world):
    c, ds = synth(augment="none", n_per_class=8)
    c = replace(c, batch_size=6)  # 24 items, divisible by 2 and 3
    single = build_loader(ds, c, train=True, seed=11, epoch=4).sampler
    single_order, _ = single.epoch_order(4)
    shards = [build_loader(ds, c, train=True, seed=11, epoch=4, rank=r, world_size=world).sampler
              for r in range(world)]
    orders = [s.epoch_order(4)[0] for s in shards]
    flat = sum(orders, [])
    assert sorted(flat) == list(range(24))  # disjoint and complete
    per_rank = 6 // world
    assert all(s.num_batches == single.num_batches == 4 for s in shards)
    for t in range(4):  # the ranks' step-t batches together are the single-process batch t
        union = sorted(i for o in orders for i in o[t * per_rank:(t + 1) * per_rank])
        assert union == sorted(single_order[t * 6:(t + 1) * 6])
    # the samples (and their augmentation seeds) agree between the ranks and the single process
    _, single_seeds = single.epoch_order(4)
    seed_of = dict(zip(single_order, single_seeds))
    for s in shards:
        order, seeds = s.epoch_order(4)
        assert all(seed_of[i] == sd for i, sd in zip(order, seeds))


def test_sharding_pads_training_but_not_evaluation():
    c, ds = synth(augment="none", n_per_class=3)  # 9 items over 2 ranks
    c = replace(c, batch_size=4, eval_batch_size=2)
    train = [build_loader(ds, c, train=True, seed=0, rank=r, world_size=2) for r in range(2)]
    counts = [sum(len(y) for _, y in loader) for loader in train]
    assert counts == [5, 5]  # equal steps on every rank, one item repeated
    orders = [loader.sampler.epoch_order(0)[0] for loader in train]
    assert set(orders[0]) | set(orders[1]) == set(range(9))
    evals = [build_loader(ds, c, train=False, seed=0, rank=r, world_size=2).sampler.epoch_order(0)[0]
             for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(9)) and (len(evals[0]), len(evals[1])) == (5, 4)
    with raises("cfg.yaml: data.batch_size: 4 is not divisible by the 3 processes"):
        build_loader(ds, c, train=True, seed=0, world_size=3)


def test_augmentation_differs_per_epoch_but_not_per_run():
    from unitune.data import SeededFetch

    for augment, varies in (("randaugment", True), ("none", False)):
        c, ds = synth(augment=augment)
        sampler = build_loader(ds, c, train=True, seed=9).sampler
        fetch = SeededFetch(ds)
        views = []
        for epoch in (0, 1):
            order, seeds = sampler.epoch_order(epoch)
            views.append(fetch[(0, seeds[order.index(0)])][0])
        assert (not torch.equal(views[0], views[1])) == varies
        order, seeds = sampler.epoch_order(0)
        assert torch.equal(fetch[(0, seeds[order.index(0)])][0], views[0])
