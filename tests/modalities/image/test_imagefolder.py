"""imagefolder loader: metadata.jsonl / captions.csv, bad images, mismatched caption files."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from modalities.image.data import ImageFolderDataset, load_image


def _write_images(root, n=4, size=(48, 40)):
    """PNG/JPEG files with a known colour each; returns {file_name: caption}."""
    caps = {}
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"img{i}.png" if i % 2 == 0 else f"sub/img{i}.jpg"
        Image.new("RGB", size, (40 * i, 255 - 40 * i, 128)).save(root / name)
        caps[name] = f"a picture number {i}"
    return caps


def _jsonl(root, caps):
    lines = [json.dumps({"file_name": k, "text": v}) for k, v in caps.items()]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def _csv(root, caps):
    with (root / "captions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "text"])
        w.writerows(caps.items())


@pytest.mark.parametrize("writer", [_jsonl, _csv])
def test_loads_folder_with_either_caption_file(tmp_path, writer):
    caps = _write_images(tmp_path)
    writer(tmp_path, caps)
    ds = ImageFolderDataset(tmp_path, image_size=16)
    assert len(ds) == 4 and sorted(ds.files) == sorted(caps)
    for i in range(len(ds)):
        x, cap, attrs = ds[i]
        assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1
        assert cap == caps[ds.files[i]] and (attrs == -1).all()
        k = int(cap.split()[-1])
        expected = torch.tensor([40 * k, 255 - 40 * k, 128]) / 127.5 - 1
        assert torch.allclose(x.mean((1, 2)), expected, atol=0.05)  # right image, right caption
    lazy = ImageFolderDataset(tmp_path, image_size=16, preload=False)
    assert torch.equal(lazy[1][0], ds[1][0])


def test_resize_and_center_crop_keeps_the_middle(tmp_path):
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 26:34] = 255  # a white band in the middle of a wide image
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 10)  # -> 10 x 30, keep columns 10..20
    assert out.shape == (10, 10, 3)
    assert out[:, 4:6].min() > 200  # centre of the crop is the white band
    assert out[:, 0].max() < 60 and out[:, -1].max() < 60


def test_corrupt_image_skipped_with_warning_or_refused(tmp_path):
    caps = _write_images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    caps["broken.png"] = "a broken picture"
    _jsonl(tmp_path, caps)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*broken\.png"):
        ds = ImageFolderDataset(tmp_path, image_size=8)
    assert len(ds) == 4 and "broken.png" not in ds.files and len(ds.skipped) == 1
    with pytest.raises(ValueError, match=r"1 unreadable image.*broken\.png"):
        ImageFolderDataset(tmp_path, image_size=8, on_bad_image="error")
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageFolderDataset(tmp_path, on_bad_image="ignore")


def test_all_images_corrupt_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    _jsonl(tmp_path, {"a.png": "x"})
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="empty dataset"):
        ImageFolderDataset(tmp_path)


def test_caption_file_not_matching_images(tmp_path):
    caps = _write_images(tmp_path)
    _jsonl(tmp_path, caps | {"ghost.png": "not there"})
    with pytest.raises(ValueError, match=r"1 file\(s\) that do not exist: ghost\.png"):
        ImageFolderDataset(tmp_path)
    del caps["sub/img1.jpg"]
    _csv(tmp_path, caps)
    (tmp_path / "metadata.jsonl").unlink()
    with pytest.raises(ValueError, match=r"have no caption.*sub/img1\.jpg"):
        ImageFolderDataset(tmp_path)


def test_empty_or_uncaptioned_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl.*captions.csv"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty dataset"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolderDataset(tmp_path / "nope")


def test_malformed_caption_files(tmp_path):
    _write_images(tmp_path, n=1)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "img0.png", "text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "img0.png"}\n')
    with pytest.raises(ValueError, match="'text'"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "captions.csv").write_text("name,caption\nimg0.png,hi\n")
    with pytest.raises(ValueError, match="file_name,text"):
        ImageFolderDataset(tmp_path)
