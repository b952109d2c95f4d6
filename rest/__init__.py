"""rest-em: self-training (ReST / ReST-EM) for language models on problems with checkable answers."""

__version__ = "0.1.0"
