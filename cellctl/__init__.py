"""cellctl: an edge cell-controller daemon for modular microfactories."""

__version__ = "0.1.0"
