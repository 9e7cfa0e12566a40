"""Quantizers, the sparsifier and bit packing: pure numpy, randomness passed in."""
