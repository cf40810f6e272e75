"""The local web demo: chat with μOmni in a browser (``python -m omni.web``; see omni/web/server.py)."""
