"""Keel: an open-source LLMOps platform.

The server lives in `keel.server`, the Python client in `keel.sdk`; importing `keel` imports
neither.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
