"""Frozen-feature classifiers of the paper: linear probes on conv1..conv5 (Tables 4 and 5, Zhang et al.'s protocol)
and the nonlinear classifier of Noroozi & Favaro (Table 6).

Modules: `taps` (which blobs, resized or pooled to ~9K dims), `heads` (Caffe BatchNorm without affine + one
InnerProduct per tap), `cache` / `extract` (a float16 memmap feature store), `config` (protocol settings with their
sources), `nonlinear_model`, `metrics`, `plots`, `verify_rows`, `sample_data` (a small real image set).
"""
