"""splitcomp: cut a network in two, compress the intermediate features, serve the tails."""

__version__ = "0.1.0"
