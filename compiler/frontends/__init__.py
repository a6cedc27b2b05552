"""``msd.compiler.frontends``: torch programs that reach msd from elsewhere.

``thirdparty`` rewrites torchao / PT2E quantized graphs into plain torch (the pipeline calls it on
every exported program); ``dynamo`` is the ``torch.compile(backend="msd")`` backend, built on the
pipeline.
"""
