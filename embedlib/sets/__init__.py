"""Embedding sets: the on-storage format (`embedding_set`: parts and manifest), its Arrow
vector columns (`columns`), and vector inputs read as row ranges (`sources`: embedding
sets, Parquet of id + vector, .npy) for index builds, clustering and maps."""
