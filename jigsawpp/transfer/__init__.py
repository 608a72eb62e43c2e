"""Knowledge transfer by cluster classification (Noroozi et al., CVPR 2018, §3 and Fig. 2).

(a) a teacher pre-trained on a pretext task -> (b) its conv4 features clustered by k-means (k = 2000) -> (c) every
image labelled with its nearest centroid -> (d) an AlexNet trained to classify those pseudo-labels, whose conv
layers are then transferred. Stages: `features`, `hog` (the CC+HOG baseline's features), `kmeans`, `labels`,
`train`, `regression` (the [37] baseline), `pipeline` (the chain with skip-if-complete).
"""
