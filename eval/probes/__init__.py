"""Frozen-feature classifiers of the paper: linear probes on conv1..conv5 (Tables 4 and 5, Zhang et al.'s protocol)
and the nonlinear classifier of Noroozi & Favaro (Table 6).

Runs: `linear.run_linear` (``jigsawpp eval linear``) and `nonlinear.run_nonlinear` (``jigsawpp eval nonlinear``).
Pieces: `taps` (which blobs, resized or pooled to ~9K dims), `heads` (Caffe BatchNorm without affine + one
InnerProduct per tap), `cache` / `extract` / `cached` / `sources` (a float16 memmap feature store and training from
it), `config` (protocol settings with their sources), `nonlinear_model`, `data`, `evaluate`, `metrics`, `plots`,
`outputs`, `provenance` / `verify_rows` (stamps and ``jigsawpp verify`` rows), `trunk` (model loading),
`sample_data` (a small real image set for CPU runs).
"""
