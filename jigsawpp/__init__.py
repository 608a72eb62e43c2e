"""jigsawpp: the Jigsaw++ / cluster-classification method of Noroozi et al. (CVPR 2018), the authors' released
Caffe models, and the command line. Caffe import lives in `caffe_import`, evaluation protocols in `eval`."""

__version__ = "0.1.0"
