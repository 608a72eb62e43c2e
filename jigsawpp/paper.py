"""The paper's reported numbers and the release page's model table, as frozen data (verify compares against them).

Sources, transcribed once and never edited to fit a result:

* Noroozi, Vinjimoor, Favaro, Pirsiavash, "Boosting Self-Supervised Learning via Knowledge Transfer", CVPR 2018:
  Table 3 (PASCAL VOC fine-tuning: classification mAP, detection mAP single-/multi-scale, segmentation mIU),
  Table 4 (ImageNet linear classifier, top-1 per frozen layer), Table 5 (Places linear classifier),
  Table 6 (ImageNet nonlinear classifier, 10 crops). A "-" in the paper is None here.
* The project page's "Pre-trained Models" table (cvg.unibe.ch/media/project/noroozi/knowledge_transfer.htm):
  method, pretext architecture, cluster classification, detection mAP (multi-scale Fast R-CNN) and zip name.

Method names are the paper's, without the citation brackets ("Context [7]*" -> "Context*"); `ref` is the paper's
"Ref" column (where the number was taken from), None where blank.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One method's row of a results table."""

    method: str
    ref: str | None
    values: tuple[float | None, ...]


@dataclass(frozen=True)
class Table:
    """A results table: caption, column names (metric per column) and rows keyed by method."""

    name: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]

    def row(self, method: str) -> dict[str, float | None] | None:
        """{column: value} for `method`, or None when the table has no such row."""
        for row in self.rows:
            if row.method == method:
                return dict(zip(self.columns, row.values, strict=True))
        return None


_ = None  # a "-" in the paper

# Table 3: PASCAL VOC fine-tuning (AlexNet at fine-tuning). Class. = VOC07 classification mAP, Det. = Fast R-CNN
# VOC07 mAP single-scale (SS) / multi-scale (MS), Segm. = FCN VOC12 mIU.
TABLE3 = Table("table3", "PASCAL VOC fine-tuning", ("classification", "detection_ss", "detection_ms", "segmentation"), (
    Row("Supervised", None, (79.9, 59.1, 59.8, 48.0)),
    Row("CC+HOG", None, (70.2, 53.2, 53.5, 39.2)),
    Row("Random", "[27]", (53.3, 43.4, _, 19.8)),
    Row("ego-motion", "[1]", (54.2, 43.9, _, _)),
    Row("BiGAN", "[9]", (58.6, 46.2, _, 34.9)),
    Row("ContextEncoder", "[27]", (56.5, 44.5, _, 29.7)),
    Row("Video", "[16]", (63.1, 47.2, _, _)),
    Row("Colorization", "[39]", (65.9, 46.9, _, 35.6)),
    Row("Split-Brain", "[40]", (67.1, 46.7, _, 36.0)),
    Row("Context", "[16]", (55.3, 46.6, _, _)),
    Row("Context*", "[16]", (65.3, 51.1, _, _)),
    Row("Counting", "[23]", (67.7, 51.4, _, 36.6)),
    Row("WatchingObjectsMove", "[26]", (61.0, _, 52.2, _)),
    Row("Jigsaw", "[21]", (67.7, 53.2, _, _)),
    Row("Jigsaw++", None, (69.8, 55.5, 55.7, 38.1)),
    Row("CC+Context-ColorDrop", None, (67.9, 52.8, 53.4, _)),
    Row("CC+Context-ColorProjection", None, (66.7, 51.5, 51.8, _)),
    Row("CC+Jigsaw++", None, (69.9, 55.0, 55.8, 40.0)),
    Row("[37]+vgg-Jigsaw++", None, (70.6, 54.8, 55.2, 38.0)),
    Row("CC+vgg-Context", None, (68.0, 53.0, 53.5, _)),
    Row("CC+vgg-Jigsaw++", None, (72.5, 56.5, 57.2, 42.6)),
))

_CONV = ("conv1", "conv2", "conv3", "conv4", "conv5")

# Table 4: ImageNet classification with a linear classifier on frozen layers (Zhang et al.'s code), top-1.
TABLE4 = Table("table4", "ImageNet classification with a linear classifier", _CONV, (
    Row("Supervised", "[40]", (19.3, 36.3, 44.2, 48.3, 50.5)),
    Row("CC+HOG", None, (16.8, 27.4, 20.7, 32.0, 29.1)),
    Row("Random", "[40]", (11.6, 17.1, 16.9, 16.3, 14.1)),
    Row("Context", "[40]", (16.2, 23.3, 30.2, 31.7, 29.6)),
    Row("ContextEncoder", "[40]", (14.1, 20.7, 21.0, 19.8, 15.5)),
    Row("BiGAN", "[40]", (17.7, 24.5, 31.0, 29.9, 28.0)),
    Row("Colorization", "[40]", (12.5, 24.5, 30.4, 31.5, 30.3)),
    Row("Split-Brain", "[40]", (17.7, 29.3, 35.4, 35.2, 32.8)),
    Row("Counting", "[23]", (18.0, 30.6, 34.3, 32.5, 25.7)),
    Row("Jigsaw++", None, (18.2, 28.7, 34.1, 33.2, 28.0)),
    Row("CC+Jigsaw++", None, (18.9, 30.5, 35.7, 35.4, 32.2)),
    Row("CC+vgg-Jigsaw++", None, (19.2, 32.0, 37.3, 37.1, 34.6)),
))

# Table 5: Places classification with a linear classifier (pre-trained on ImageNet without labels), top-1.
TABLE5 = Table("table5", "Places classification with a linear classifier", _CONV, (
    Row("Places labels", None, (22.1, 35.1, 40.2, 43.3, 44.6)),
    Row("ImageNet labels", None, (22.7, 34.8, 38.4, 39.4, 38.7)),
    Row("CC+HOG", None, (20.3, 30.0, 31.8, 32.5, 29.8)),
    Row("Random", None, (15.7, 20.3, 19.8, 19.1, 17.5)),
    Row("Context", None, (19.7, 26.7, 31.9, 32.7, 30.9)),
    Row("Jigsaw", None, (23.0, 31.9, 35.0, 34.2, 29.3)),
    Row("Context encoder", None, (18.2, 23.2, 23.4, 21.9, 18.4)),
    Row("Sound", None, (19.9, 29.3, 32.1, 28.8, 29.8)),
    Row("BiGAN", None, (22.0, 28.7, 31.8, 31.3, 29.7)),
    Row("Colorization", None, (16.0, 25.7, 29.6, 30.3, 29.7)),
    Row("Split-Brain", None, (21.3, 30.7, 34.0, 34.1, 32.5)),
    Row("Counting", None, (23.3, 33.9, 36.3, 34.7, 29.6)),
    Row("Jigsaw++", None, (22.0, 31.2, 34.3, 33.9, 22.9)),
    Row("CC+Jigsaw++", None, (22.5, 33.0, 36.2, 36.1, 34.0)),
    Row("CC+vgg-Jigsaw++", None, (22.9, 34.2, 37.5, 37.1, 34.4)),
))

# Table 6: ImageNet classification with a nonlinear classifier (layers up to the column frozen, the rest retrained),
# top-1 with 10 crops.
TABLE6 = Table("table6", "ImageNet classification with a nonlinear classifier", _CONV + ("fc6", "fc7"), (
    Row("Supervised", "[17]", (57.3, 57.3, 57.3, 57.3, 57.3, _, _)),
    Row("Random", "[21]", (48.5, 41.0, 34.8, 27.1, 12.0, _, _)),
    Row("Video", "[21]", (51.8, 46.9, 42.8, 38.8, 29.8, _, _)),
    Row("BiGAN", "[9]", (55.3, 53.2, 49.3, 44.4, 34.9, _, _)),
    Row("Counting", "[23]", (54.7, 52.7, 48.2, 43.3, 32.9, _, _)),
    Row("Context", "[21]", (53.1, 47.6, 48.7, 45.6, 30.4, _, _)),
    Row("Jigsaw", "[21]", (54.7, 52.8, 49.7, 45.3, 34.6, _, _)),
    Row("Jigsaw++", None, (54.7, 52.9, 50.3, 46.1, 35.4, _, _)),
    Row("CC+vgg-Context", None, (55.0, 52.0, 48.2, 44.3, 37.9, 29.1, 20.3)),
    Row("CC+Jigsaw++", None, (55.3, 52.2, 51.4, 47.6, 41.1, 33.9, 25.9)),
    Row("CC+vgg-Jigsaw++", None, (55.9, 55.1, 52.4, 49.5, 43.9, 37.3, 27.9)),
))

TABLES: dict[str, Table] = {t.name: t for t in (TABLE3, TABLE4, TABLE5, TABLE6)}


@dataclass(frozen=True)
class ReleasedModel:
    """One row of the project page's "Pre-trained Models" table, and the paper row it reports."""

    file: str                        # zip name on the project page, without ".zip"
    method: str                      # pretext task as the page names it
    pretext_architecture: str | None  # network trained on the pretext task (None: HOG is hand-crafted)
    cluster_classification: bool    # True: the zip's AlexNet was trained on cluster pseudo-labels (CC)
    detection_map: float             # the page's multi-scale Fast R-CNN VOC07 mAP
    paper_method: str                # the Table 3..6 row this model is
    why: str                         # how the page row was matched to the paper row


# The page's CC column was rendered as marks lost in the text copy; the zip suffixes (_acc: AlexNet-CC, _cc, _vcc:
# VGG-CC) and the page's note that the Jigsaw++ AlexNet row is "without cluster classification" fix it. Each row is
# matched to Table 3 by its detection mAP, which equals exactly one MS entry of a row with the same method.
RELEASES: dict[str, ReleasedModel] = {m.file: m for m in (
    ReleasedModel("context_acc", "Context", "AlexNet", True, 53.4, "CC+Context-ColorDrop",
                  "page: Context / AlexNet / CC / 53.4 = Table 3 MS mAP of CC+Context-ColorDrop"),
    ReleasedModel("hog_cc", "HOG", None, True, 53.5, "CC+HOG",
                  "page: HOG / - / CC / 53.5 = Table 3 MS mAP of CC+HOG"),
    ReleasedModel("jigsawpp", "Jigsaw++", "AlexNet", False, 55.7, "Jigsaw++",
                  "page: Jigsaw++ / AlexNet / no CC / 55.7 = Table 3 MS mAP of Jigsaw++"),
    ReleasedModel("jigsawpp_acc", "Jigsaw++", "AlexNet", True, 55.8, "CC+Jigsaw++",
                  "page: Jigsaw++ / AlexNet / CC / 55.8 = Table 3 MS mAP of CC+Jigsaw++"),
    ReleasedModel("jigsawpp_vcc", "Jigsaw++", "VGG16", True, 57.2, "CC+vgg-Jigsaw++",
                  "page: Jigsaw++ / VGG / CC / 57.2 = Table 3 MS mAP of CC+vgg-Jigsaw++"),
)}


def paper_numbers(method: str) -> dict[str, dict[str, float | None]]:
    """{table name: {column: value}} for every table that has a row for `method` (a paper method name)."""
    out = {}
    for name, table in TABLES.items():
        row = table.row(method)
        if row is not None:
            out[name] = row
    return out
