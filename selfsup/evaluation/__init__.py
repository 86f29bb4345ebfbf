"""Evaluation protocols on frozen encoders: feature extraction, weighted kNN and linear probe.

Typical use::

    train = extract_features(encoder, train_images, mean, std)
    test = extract_features(encoder, test_images, mean, std)
    results = knn_classify(train, train_labels, test, test_labels)
    results |= linear_probe(train, train_labels, test, test_labels)                 # softmax, SGD sweep
    results |= linear_probe(train, train_labels, test, test_labels, loss="hinge")   # multiclass SVM

``cached_features(..., cache_dir=DIR)`` keeps features on disk for the next protocol;
:mod:`selfsup.evaluation.plots` draws t-SNE and confusion-matrix PNGs.
"""

from selfsup.evaluation.features import cached_features, extract_features
from selfsup.evaluation.knn import knn_classify
from selfsup.evaluation.linear import LinearProbe, fit_linear_probe, linear_probe

__all__ = ["cached_features", "extract_features", "fit_linear_probe", "knn_classify", "linear_probe", "LinearProbe"]
