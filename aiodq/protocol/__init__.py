"""The sans-I/O ring: connections, the coordinator, worker sessions, algorithms and objectives.

Nothing here opens a socket, reads a clock, sleeps or touches a file: bytes and
the time come in as arguments, bytes and events go out (docs/architecture.md).
"""
