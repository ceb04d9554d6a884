"""Layering: common imports no method folder; no method imports another; eval_cylib imports nothing of ours."""
import ast
import os
import re
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ("qaconv", "san", "mudeep", "crossmodal_bot", "mprd")
OURS = METHODS + ("common", "eval_cylib", "tests", "benchmarks")


def imported_top_packages(path):
    """Top-level package names a Python file imports (absolute imports only)."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def python_files(folder):
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


class TestLayering(unittest.TestCase):
    def test_helper_sees_imports(self):
        # the checker itself must detect an import, or the tests below could pass vacuously
        self.assertIn("os", imported_top_packages(__file__))
        self.assertIn("unittest", imported_top_packages(__file__))

    def test_common_imports_no_method(self):
        files = list(python_files("common"))
        self.assertGreater(len(files), 5)
        for path in files:
            bad = imported_top_packages(path) & set(METHODS)
            self.assertFalse(bad, f"{os.path.relpath(path, ROOT)} imports method folder(s) {sorted(bad)}")

    def test_methods_do_not_import_each_other(self):
        for method in METHODS:
            for path in python_files(method):
                bad = imported_top_packages(path) & (set(METHODS) - {method})
                self.assertFalse(bad, f"{os.path.relpath(path, ROOT)} imports other method(s) {sorted(bad)}")

    def test_eval_cylib_is_self_contained(self):
        for dirpath, _, files in os.walk(os.path.join(ROOT, "eval_cylib")):
            for name in files:
                if name.endswith((".py", ".pyx")):
                    text = open(os.path.join(dirpath, name)).read()
                    used = set(re.findall(r"^\s*(?:from|import|cimport)\s+([A-Za-z_]\w*)", text, re.M))
                    self.assertFalse(used & set(OURS) - {"eval_cylib"}, f"{name} imports {used & set(OURS)}")


if __name__ == "__main__":
    unittest.main()
