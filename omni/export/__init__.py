"""ONNX export of μOmni (omni/export/exporter.py), its parity report (parity.py) and a torch-free
ONNX Runtime runner (runtime.py). This package file imports nothing: runtime.py must load on a
machine without torch."""
