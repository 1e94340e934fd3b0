"""Accuracy: COCO bbox AP of detections, of a model run over a dataset, of several models compared."""
