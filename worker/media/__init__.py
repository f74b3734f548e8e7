"""Stored images: the storage interface and its local-directory and S3 backends."""
