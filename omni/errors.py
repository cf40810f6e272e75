"""Errors shared by torch code and the torch-free runtime (omni/export/runtime.py), kept free of imports."""
from __future__ import annotations


class DataError(ValueError):
    """A data file is missing, empty or unusable; the message names the file."""
