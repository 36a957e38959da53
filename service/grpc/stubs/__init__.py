"""Triton's vendored ``.proto`` files and the Python code generated from them (``generate.py``)."""
