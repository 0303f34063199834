"""
A processor's trial test written from the docs runs from a pip install:
this project installed into a fresh virtual environment (no checkout on
its path), the C{orders.py} and C{test_orders.py} of C{docs/processors.rst}
("Testing a processor") written into an empty directory, and
C{python -m twisted.trial test_orders} run there, as the page says.

The environment gets this project with C{pip install --no-deps} (from a
copy of its sources, so the checkout gets no build files) and its
dependencies from the test run's own environment, through a C{.pth} file:
a full install would download them all again for nothing.
"""

import os
import shutil
import sys
import sysconfig

from twisted.internet import defer, utils
from twisted.trial import unittest

from tests.support.docpages import ROOT, page_files

#: what a source distribution of this project holds (see setup.py)
SOURCES = ("setup.py", "README.rst", "hermes_tx", os.path.join("twisted", "plugins", "hermes_plugin.py"))


def clean_environment():
    """
    @return: this process's environment without what would put the checkout
        (or anything else) on a child's path.
    """
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP") and not k.startswith("PIP_")}


class InstalledTests(unittest.TestCase):
    #: pip may build the package's wheel (seconds, more on a busy machine)
    timeout = 300

    @defer.inlineCallbacks
    def run_in(self, folder, executable, *args):
        """
        @return: a Deferred firing with C{(output, exit status)} of
            C{executable ARGS} run in C{folder}, standard error included.
        """
        out, err, code = yield utils.getProcessOutputAndValue(
            executable, args, env=clean_environment(), path=folder)
        return (out + err).decode("utf-8", "replace"), code

    def copy_sources(self, target):
        for name in SOURCES:
            source = os.path.join(ROOT, name)
            destination = os.path.join(target, name)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            if os.path.isdir(source):
                shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, destination)

    @defer.inlineCallbacks
    def test_the_pages_processor_test_passes(self):
        base = os.path.abspath(self.mktemp())
        venv, src, work = (os.path.join(base, name) for name in ("venv", "src", "work"))
        for folder in (src, work):
            os.makedirs(folder)
        out, code = yield self.run_in(base, sys.executable, "-m", "venv", "--without-pip", venv)
        self.assertEqual(code, 0, out)
        python = os.path.join(venv, "bin", "python")
        out, code = yield self.run_in(base, python, "-c",
                                      "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        self.assertEqual(code, 0, out)
        with open(os.path.join(out.strip(), "dependencies.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        self.copy_sources(src)
        out, code = yield self.run_in(base, python, "-m", "pip", "install", "--no-deps", "--quiet",
                                      "--disable-pip-version-check", src)
        self.assertEqual(code, 0, out)

        files = page_files("processors.rst")
        for name in ("orders.py", "test_orders.py"):
            with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                f.write(files[name])
        out, code = yield self.run_in(work, python, "-c", (
            "import importlib.util, sys, hermes_tx; print(hermes_tx.__file__); "
            f"print({ROOT!r} in sys.path, importlib.util.find_spec('tests'))"))
        self.assertEqual(code, 0, out)
        where, checkout = out.splitlines()
        self.assertTrue(where.startswith(venv + os.sep), where)
        self.assertEqual(checkout, "False None")

        out, code = yield self.run_in(work, python, "-m", "twisted.trial", "test_orders")
        self.assertEqual(code, 0, out)
        self.assertIn("PASSED (successes=7)", out)
        self.assertNotIn("flushLoggedErrors", out)
