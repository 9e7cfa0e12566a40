"""The paper's lab: experiments, the network-namespace harness and benchmarks (extra ``aiodq[lab]``).

Not part of the library that applications embed: nothing outside this package imports it.
"""
