"""Backends run ready tensors through one model: ``torch`` (open_clip) or ``onnx`` (ONNX Runtime)."""
