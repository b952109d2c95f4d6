"""The ``rest`` command line, installed as ``rest.cli``."""
