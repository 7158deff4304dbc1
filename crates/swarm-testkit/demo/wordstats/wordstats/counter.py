"""Counting words."""

from collections import Counter


def count_words(tokens):
    """Map each word to the number of times it occurs."""
    return dict(Counter(tokens))


def top_n(counts, n):
    """The ``n`` most frequent ``(word, count)`` pairs; ties alphabetically."""
    if n < 0:
        raise ValueError("n must not be negative")
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
