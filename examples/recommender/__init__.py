"""Content-based recommendations from item embeddings computed through llmos (see README.md)."""
