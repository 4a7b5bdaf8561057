"""fakebank: a bank of known fake images with forensic-ViT embeddings, FAISS search and kNN-augmented verdicts."""

__version__ = "0.1.0"
