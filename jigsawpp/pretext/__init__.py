"""The Jigsaw++ pretext task (Noroozi et al., CVPR 2018, Sec. 3): the context-free network (`networks`), its Caffe
export as a release-shaped zip (`caffe_export`), the image lists and crop batches (`data`), training (`train`),
puzzle accuracy on held-out images (`evaluate`), figures (`figures`) and a small real run on packaged photos
(`sample_run`). The permutation sets and the puzzle sampler are `jigsawpp.permutations` and `jigsawpp.puzzle`."""
