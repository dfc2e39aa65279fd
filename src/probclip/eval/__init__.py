"""Evaluation: metrics, zero-shot classification, BPRW, retrieval (incl. ECCV Caption / CxC / COCO),
uncertainty analyses, HierarCaps, Urban-1k and RoCOCO-style stress tests.

Submodules are imported on demand; ``probclip.eval.metrics`` holds the metric primitives.
"""
