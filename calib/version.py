"""The version of calib (one place: the package, its outputs' provenance and ``--version`` read it)."""

__version__ = "0.1.0"
