"""Media I/O: PyAV encoding/decoding, faces, audio and motion."""
