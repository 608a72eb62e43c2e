"""Knowledge transfer by cluster classification (Noroozi et al., CVPR 2018, §3 and Fig. 2).

(a) a teacher pre-trained on a pretext task -> (b) its conv4 features, max-pooled (5 x 5 x 384 AlexNet,
4 x 4 x 512 VGG16), clustered by k-means (k = 2000) -> (c) every image labelled with its nearest centroid -> (d) a
CaffeNet-layout AlexNet (conv1 stride 4) trained to classify those pseudo-labels; its conv layers are transferred.

Modules, one stage each (CLI: `jigsawpp transfer features|hog|cluster|label|train|regress|run`):

- `teacher`: `load_teacher` (a `jigsawpp convert` folder, a prototxt + caffemodel, random:alexnet), the pooling
  presets (`Pooling`, `POOL_PRESETS`);
- `features`: `extract_features(ModelFeatures(teacher, FeatureConfig()), images, FEATS)`, resumable, torchrun;
- `store`: the feature folder (`open_features`, `ImageList`, `images_from_data`, `write_feature_array`);
- `hog`: the CC+HOG baseline's bag-of-words rows (`hog_features`);
- `kmeans`: `cluster(store, CENTROIDS, config=KMeansConfig())` with faiss on every point, `load_centroids`;
- `labels`: `label_features(store, centroids, LABELS, split=...)`, written as the release zips hold them;
- `network`: the CC AlexNet's fillers, deploy prototxt and caffemodel; `release_out`: the release-shaped zip;
- `train`: `train_cc(LABELS, DATA, DIR, config=CCConfig())` (BVLC CaffeNet recipe; DIR/NAME.zip);
- `regression`: the paper's [37] baseline (`train_regression`);
- `pipeline`: `run_transfer`, the whole chain with every finished stage skipped.
"""
