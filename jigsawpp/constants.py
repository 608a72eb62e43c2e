"""Constants used across the toolkit, each with its source; never inline them elsewhere."""

# ILSVRC-2012 mean pixel in BGR order used by CaffeNet/AlexNet deploys and the Jigsaw 2016 prototxt
# (`mean_value: 104 117 123`, MehdiNoroozi/JigsawPuzzleSolver train_val_cfn_jps.prototxt; BVLC CaffeNet).
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)

# Fast R-CNN PIXEL_MEANS, BGR, no scaling (rbgirshick/fast-rcnn lib/fast_rcnn/config.py).
FAST_RCNN_PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)

# FCN mean, BGR (shelhamer/fcn.berkeleyvision.org infer.py / voc_layers.py).
FCN_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
