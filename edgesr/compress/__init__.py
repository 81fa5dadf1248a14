"""Compression: distillation, structured pruning and INT8 quantization, chained by recipes.

Each stage is a plain function with keyword-only options that returns a new model; ``edgesr compress``
(:mod:`edgesr.compress.runner`) chains them as a recipe says and reports what each one cost and bought.
"""
