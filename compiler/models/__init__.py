"""``msd.compiler.models``: model files read into plain-torch reference modules.

``gguf_file`` (a strict GGUF container parser), ``gguf`` (GGUF tensors, Llama config and tokenizer
read from a file; ``load_gguf``) and ``llama`` (the Llama architecture with its functional KV-cache
step, independent of the file format).
"""
