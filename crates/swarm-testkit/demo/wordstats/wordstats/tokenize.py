"""Splitting text into words."""

import re

# A word: letters or digits, optionally with one apostrophe part ("it's").
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text):
    """Return the lower-cased words of ``text`` in the order they appear."""
    return _WORD.findall(text.lower())
