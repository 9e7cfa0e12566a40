"""The codec ring: quantizers, vector values and the wire format v1, pure numpy and bytes.

No sockets, no clocks, no global randomness: quantizers take a
``numpy.random.Generator`` or the dither itself (docs/architecture.md).
"""
