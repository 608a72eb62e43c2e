"""Packaging for jigsawpp (the method, release handling, CLI), caffe_import, eval and the bundled prototxt files."""

from setuptools import find_namespace_packages, setup

setup(
    name="jigsawpp",
    version="0.1.0",
    description="Caffe-compatible reproduction toolkit for Noroozi et al., Boosting Self-Supervised Learning via "
    "Knowledge Transfer (CVPR 2018): exact Caffe import, ONNX export, and the paper's evaluations.",
    python_requires=">=3.10",
    # namespace discovery, so the data-only folders (prototxt/vgg16, ...) are packages and setuptools stays quiet
    packages=find_namespace_packages(include=["jigsawpp*", "caffe_import*", "eval*", "prototxt*"]),
    package_data={"prototxt": ["**/*.prototxt"], "caffe_import.proto": ["caffe.proto"]},
    include_package_data=True,
    install_requires=[
        # torch 2.14.1 + torchvision 0.29.1 is the pair that works together on our machines (CUDA build; it also
        # runs on CPU). The ranges let pip pick exactly that pair here and a compatible one elsewhere.
        "torch>=2.2,<2.15",
        "torchvision>=0.17,<0.30",
        "numpy>=1.24",
        # Caffe's protobuf schema is compiled into caffe_import/proto/caffe_pb2.py; that gencode needs >= 7.35.1.
        "protobuf>=7.35.1",
        "onnx>=1.16",
        # GPU build of onnxruntime; it runs on CPU too. Never install `onnxruntime` beside it (same package dir).
        "onnxruntime-gpu>=1.18",
        # Exactly one OpenCV wheel: contrib (selective search), headless (servers), 4.x (5.x dropped the Caffe
        # importer that our tests use as an oracle). Other OpenCV wheels overwrite the same `cv2`.
        "opencv-contrib-python-headless>=4.8,<5",
        "click>=8.1",
        "safetensors>=0.4",  # weights are never pickled
        "tqdm>=4.60",        # progress bars on long steps
        "matplotlib>=3.7",   # PR curves, detection and segmentation overlays; also ships the demo photo
        "scipy>=1.10",       # reads the original selective-search .mat proposal files (scipy.io.loadmat)
        # k-means of the knowledge-transfer step (k = 2000 on every ImageNet image). CPU build; on CUDA machines
        # replace it by a GPU build (e.g. faiss-gpu-cu12): both install the same `faiss` module.
        "faiss-cpu>=1.7.4",
    ],
    extras_require={
        # scikit-image: real photos in its wheel (skimage.data) for the image-reading and dataset tests;
        # scikit-learn: the oracle of the VOC classification AP tests (Kraehenbuehl et al. report its AP), real
        # labelled digits and the NMI/ARI/nearest-neighbour oracles of the transfer tests, the probes' independent
        # oracle (multinomial LogisticRegression)
        "test": ["pytest>=7.4", "grpcio-tools>=1.60", "imgviz>=1.7", "ruff>=0.5", "scikit-image>=0.21",
                 "scikit-learn>=1.3"],
    },
    entry_points={"console_scripts": ["jigsawpp=jigsawpp.cli:main"]},
)
