"""Evaluation protocols of Noroozi et al. (CVPR 2018): PASCAL VOC detection AP, classification, segmentation, probes.

Metrics follow the official PASCAL VOC devkit (``VOCevaldet.m``, ``VOCap.m``) and the transfer protocols listed in
the paper; see the module docstrings for the source each one reproduces.
"""
