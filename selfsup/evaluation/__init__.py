"""Evaluation protocols on frozen encoders: feature extraction, weighted kNN and linear probe.

Typical use::

    train = extract_features(encoder, train_images, mean, std)
    test = extract_features(encoder, test_images, mean, std)
    results = knn_classify(train, train_labels, test, test_labels)
    results |= linear_probe(train, train_labels, test, test_labels)
"""

from selfsup.evaluation.features import extract_features
from selfsup.evaluation.knn import knn_classify
from selfsup.evaluation.linear import linear_probe

__all__ = ["extract_features", "knn_classify", "linear_probe"]
