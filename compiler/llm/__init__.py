"""``msd.compiler.llm``: text generation from a GGUF Llama: prefill + decode compiled into one artifact
(``compile_generator``), its eager reference, and ``msd.generate``."""
