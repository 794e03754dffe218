"""Where the bytes live: a local filesystem backend and an S3 backend."""
