"""Rendering results as a text table or as JSON."""

import json


def format_table(rows, headers=("word", "count")):
    """A left-aligned text table of ``rows`` (tuples) under ``headers``."""
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_json(data):
    """``data`` as indented JSON with sorted keys."""
    return json.dumps(data, indent=2, sort_keys=True)
