"""The asyncio shell: the TCP master and worker, TLS contexts, secret files and checkpoint files.

The only ring that opens sockets, reads clocks, sleeps or touches files; it drives
the sans-I/O state machines of :mod:`aiodq.protocol`.
"""
