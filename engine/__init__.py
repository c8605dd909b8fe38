"""TuFT's ML engine: LoRA training and sampling on Hugging Face models.

Plain Python + torch + transformers + peft. Nothing here imports Django: the
server hands the engine the frozen dataclasses of ``engine.types`` and gets
plain results back, so the engine can be unit-tested and run by any worker.
"""
