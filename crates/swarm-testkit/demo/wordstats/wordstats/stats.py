"""Summary statistics of a list of words."""


def summary(tokens):
    """Total and unique word counts, average word length and the longest word."""
    total = len(tokens)
    if total == 0:
        return {"total": 0, "unique": 0, "average_length": 0.0, "longest": ""}
    longest = sorted(tokens, key=lambda t: (-len(t), t))[0]
    return {
        "total": total,
        "unique": len(set(tokens)),
        "average_length": round(sum(len(t) for t in tokens) / total, 2),
        "longest": longest,
    }
