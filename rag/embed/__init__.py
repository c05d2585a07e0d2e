"""Embeddings: `Embedder` and its runtimes (ONNX Runtime, OpenVINO, torch)."""
