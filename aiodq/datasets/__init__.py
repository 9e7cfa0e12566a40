"""Data shipped with aiodq: a compact copy of LIBSVM's a9a (see README.md here)."""
