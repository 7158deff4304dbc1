"""wordstats: word statistics for text files."""

__version__ = "0.1.0"
