"""A user's own model and data for gnp-study: a multilayer perceptron on scikit-learn's breast-cancer
table (569 samples, 30 features, 2 classes; Street, Wolberg & Mangasarian 1993, shipped inside the
scikit-learn wheel). Nothing here imports gnp_study: the study file names these by import path."""
