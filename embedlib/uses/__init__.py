"""The other uses of embeddings, on the same sets and indexes: static word vectors and
analogies, word2vec, clustering, 2-D maps, recommendations, fine-tuning."""
