"""``msd.compiler.quant``: quantized weights in plain torch.

``quantize`` (``msd.quantize`` and its int8 / int4 / MXFP4 linear layers, int4 packing) and ``mx``
(the numpy reference of the OCP MX formats that the pass reproduces in IR; the format's constants
are :mod:`msd.mx_format`).
"""
