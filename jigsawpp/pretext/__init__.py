"""The Jigsaw++ pretext task (Noroozi et al., CVPR 2018, Sec. 3): the context-free network (`networks`), its
Caffe export (`caffe_export`), training (`train`), puzzle accuracy on held-out images (`evaluate`) and the
figure of puzzles (`figures`). The permutation sets and the puzzle sampler are `jigsawpp.permutations` and
`jigsawpp.puzzle`."""
