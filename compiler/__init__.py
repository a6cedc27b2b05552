"""``msd.compiler``: the compiler half of msd (torch model → IREE module), one job per subpackage.

- :mod:`~msd.compiler.pipeline`: ``msd.compile`` itself (export, import, IREE phases, msd's passes in a
  worker process, the artifact);
- :mod:`~msd.compiler.frontends`: what reaches the pipeline from elsewhere (torchao/PT2E graphs made
  plain torch; ``torch.compile(backend="msd")``);
- :mod:`~msd.compiler.quant`: ``msd.quantize``'s weight formats and the numpy MX reference;
- :mod:`~msd.compiler.models`: GGUF files read into plain-torch Llama models;
- :mod:`~msd.compiler.llm`: text generation (prefill + decode artifacts, ``msd.generate``);
- :mod:`~msd.compiler.tools`: the ``msd`` and ``msd-opt`` commands.

Imports point one way: ``quant`` ← ``models`` ← ``llm``; ``frontends.thirdparty`` ← ``pipeline`` ←
``frontends.dynamo`` and ``llm``; ``tools`` on top of all.  Below the package: ``msd.passes``,
``msd.runtime``, ``msd.cost``, ``msd.mx_format``, ``msd.errors``; ``msd.runtime`` never imports it.
"""
