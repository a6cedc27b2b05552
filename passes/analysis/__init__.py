"""Analyses of linalg-on-tensors IR that more than one pass can ask; they read IR, never change it.

- :mod:`.dequant` — the weight tracer: a contraction operand evaluated symbolically into
  ``W = a·q + b`` (one 8-bit integer tensor ``q``, K-invariant ``a``, ``b``), or the reason why not.
- :mod:`.values` — value-range analysis of integer tensors (the values an element can hold, and
  the unsigned range of a weight's bits).
"""
