import unittest

from wordstats.counter import count_words, top_n
from wordstats.formatting import format_json, format_table
from wordstats.stats import summary
from wordstats.tokenize import tokenize


class TokenizeTest(unittest.TestCase):
    def test_lowercases_and_strips_punctuation(self):
        self.assertEqual(tokenize("Hello, World! Hello?"), ["hello", "world", "hello"])

    def test_keeps_apostrophes_and_digits(self):
        self.assertEqual(tokenize("It's 2 o'clock"), ["it's", "2", "o'clock"])

    def test_empty(self):
        self.assertEqual(tokenize("  ... "), [])


class CounterTest(unittest.TestCase):
    def test_counts(self):
        self.assertEqual(count_words(["a", "b", "a"]), {"a": 2, "b": 1})

    def test_top_n_orders_by_count_then_word(self):
        counts = {"b": 2, "a": 2, "c": 5, "d": 1}
        self.assertEqual(top_n(counts, 3), [("c", 5), ("a", 2), ("b", 2)])

    def test_top_n_rejects_negative(self):
        with self.assertRaises(ValueError):
            top_n({}, -1)


class StatsTest(unittest.TestCase):
    def test_summary(self):
        s = summary(["the", "cat", "sat", "on", "the", "mat"])
        self.assertEqual(s["total"], 6)
        self.assertEqual(s["unique"], 5)
        self.assertEqual(s["average_length"], 2.83)
        self.assertEqual(s["longest"], "cat")

    def test_summary_of_nothing(self):
        self.assertEqual(summary([])["total"], 0)


class FormattingTest(unittest.TestCase):
    def test_table(self):
        table = format_table([("the", 2), ("a", 10)])
        self.assertEqual(table.splitlines(), ["word  count", "----  -----", "the   2", "a     10"])

    def test_json_is_sorted(self):
        self.assertEqual(format_json({"b": 1, "a": 2}), '{\n  "a": 2,\n  "b": 1\n}')


if __name__ == "__main__":
    unittest.main()
