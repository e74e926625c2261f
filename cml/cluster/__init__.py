"""Clustering a feature table: ELKI, scikit-learn, the exact MST hierarchy, and the method x space grid."""
