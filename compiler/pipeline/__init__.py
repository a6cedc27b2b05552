"""``msd.compiler.pipeline``: the compile pipeline behind ``msd.compile``.

``driver`` (stages, ``CompiledModule``), ``importer`` (``torch.export`` + FX import, weights as named
parameters, signatures), ``iree_session`` (IREE's compiler session and phases), ``targets`` (the
IREE targets ``target=`` names) and ``worker`` (the process IREE's phases and msd's passes run in).
"""
