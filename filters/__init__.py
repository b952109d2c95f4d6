"""Filters and verifiers of rest-em, installed as ``rest.filters``."""
