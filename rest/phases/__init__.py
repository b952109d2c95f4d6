"""The phases of an iteration, one module each, and their declarations (``table``)."""
