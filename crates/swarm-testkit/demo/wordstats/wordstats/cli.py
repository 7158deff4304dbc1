"""The command line: ``python -m wordstats [--top N] [--json] [FILE ...]``."""

import argparse
import sys

from . import __version__
from .counter import count_words, top_n
from .formatting import format_json, format_table
from .stats import summary
from .tokenize import tokenize


def build_parser():
    p = argparse.ArgumentParser(prog="wordstats", description="Word statistics for text files.")
    p.add_argument("files", nargs="*", help="text files to read (standard input if none)")
    p.add_argument("--top", type=int, default=10, help="how many of the most frequent words to show")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--version", action="version", version="wordstats " + __version__)
    return p


def main(argv=None, stdin=None, stdout=None):
    args = build_parser().parse_args(argv)
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    if args.top < 0:
        print("wordstats: --top must not be negative", file=sys.stderr)
        return 2
    texts = []
    for name in args.files:
        try:
            with open(name, encoding="utf-8") as f:
                texts.append(f.read())
        except OSError as e:
            print("wordstats: cannot read {}: {}".format(name, e.strerror), file=sys.stderr)
            return 1
    if not args.files:
        texts.append(stdin.read())
    tokens = tokenize("\n".join(texts))
    top = top_n(count_words(tokens), args.top)
    info = summary(tokens)
    if args.json:
        data = {"summary": info, "top": [{"word": w, "count": c} for w, c in top]}
        print(format_json(data), file=stdout)
    else:
        print(format_table(top), file=stdout)
        print("", file=stdout)
        print(
            "{total} words, {unique} unique, average length {average_length}, longest {longest!r}".format(**info),
            file=stdout,
        )
    return 0
