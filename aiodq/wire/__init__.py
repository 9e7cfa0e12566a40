"""The wire format v1 codec: frames, message bodies and vector payloads, pure bytes."""
