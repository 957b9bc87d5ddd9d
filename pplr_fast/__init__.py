"""pplr_fast — fast, exact PPLR (Part-based Pseudo Label Refinement, CVPR 2022).

Data flows one way: images -> features (``pplr_fast.models``) -> clustering
stage (``pplr_fast.cluster``) -> pseudo-labels and agreement scores -> losses
(``pplr_fast.losses``) -> model.  See docs/method.md for every formula.
"""
__version__ = "0.1.0"  # the one version of the package; setup.py reads it from here
