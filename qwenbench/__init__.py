"""qwenbench: which Qwen model, at which quantization, runs how fast on this machine, and why."""

__version__ = "0.1.0"
