import io
import json
import os
import subprocess
import sys
import unittest

from wordstats.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "fixtures", "sample.txt")


class CliTest(unittest.TestCase):
    def run_main(self, argv, stdin=""):
        out = io.StringIO()
        code = main(argv, stdin=io.StringIO(stdin), stdout=out)
        return code, out.getvalue()

    def test_table_from_file(self):
        code, out = self.run_main(["--top", "2", SAMPLE])
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["word", "count"])
        self.assertEqual(lines[2].split(), ["the", "4"])
        self.assertIn("words", lines[-1])

    def test_json_from_stdin(self):
        code, out = self.run_main(["--json", "--top", "1"], stdin="b a b")
        self.assertEqual(code, 0)
        data = json.loads(out)
        self.assertEqual(data["top"], [{"word": "b", "count": 2}])
        self.assertEqual(data["summary"]["total"], 3)

    def test_missing_file_is_an_error(self):
        code, _ = self.run_main([os.path.join(HERE, "no-such-file.txt")])
        self.assertEqual(code, 1)

    def test_runs_as_a_module(self):
        root = os.path.dirname(HERE)
        r = subprocess.run(
            [sys.executable, "-m", "wordstats", "--top", "1", SAMPLE],
            cwd=root, capture_output=True, text=True, check=False,
        )
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("the", r.stdout)


if __name__ == "__main__":
    unittest.main()
