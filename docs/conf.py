"""
Sphinx configuration: the narrative pages and the generated command-line
reference (Sphinx), and the API reference (pydoctor, which reads the
epytext docstrings, run by its Sphinx extension into C{api/}).

Build with C{scripts/docs}; every warning, broken link or cross-reference
included, fails it.
"""

import os
import pathlib
import subprocess
import sys

import twisted

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))

project = "hermes_tx"
author = "the hermes_tx authors"
copyright = "2026, " + author
release = version = "0.1.0"

extensions = [
    "sphinx.ext.intersphinx",
    "pydoctor.sphinx_ext.build_apidocs",
    "hermes_docs",
]

root_doc = "index"
exclude_patterns = ["_build", "examples", "requirements.txt"]
# A literal block is not Python unless it says so (Python in these pages is
# a doctest or an included file the test suite runs: tests/test_docs.py).
highlight_language = "none"
# "--dsn" stays two hyphens: no typographic dashes or quotes anywhere.
smartquotes = False
nitpicky = True
html_theme = "alabaster"
html_title = "hermes_tx"
html_static_path = []
html_theme_options = {"description": "PostgreSQL LISTEN/NOTIFY and a durable outbox, as Twisted services"}


def _twisted_inventory():
    """
    An intersphinx inventory of the installed Twisted, made once per Twisted
    version by pydoctor (about 20 s; no network needed), so that C{L{Deferred}}
    in a docstring and C{:py:class:} in a page link to Twisted's API pages.

    @return: the path of the C{objects.inv} file.
    """
    cache = DOCS / "_build" / "intersphinx" / f"twisted-{twisted.__version__}"
    inventory = cache / "objects.inv"
    if not inventory.exists():
        subprocess.run(
            [sys.executable, "-m", "pydoctor", "--make-intersphinx", "--quiet",
             "--project-name=Twisted", f"--project-version={twisted.__version__}",
             f"--html-output={cache}", os.path.dirname(twisted.__file__)],
            check=True, stdout=subprocess.DEVNULL,
        )
    return inventory


TWISTED_API = "https://docs.twisted.org/en/stable/api"
_twisted_inv = _twisted_inventory()
intersphinx_mapping = {"twisted": (TWISTED_API, str(_twisted_inv))}
intersphinx_disabled_reftypes = ["std:doc"]

pydoctor_args = [
    # Private names stay (behind pydoctor's "show private" switch): public
    # docstrings link to some.  This one constant is a regular expression
    # with possessive quantifiers, which pydoctor cannot colourize.
    "--privacy=HIDDEN:hermes_tx.events._STRUCTURE",
    "--project-name=hermes_tx",
    f"--project-version={version}",
    "--project-url=../index.html",
    "--docformat=epytext",
    f"--project-base-dir={ROOT}",
    "--html-output={outdir}/api",
    f"--intersphinx-file={_twisted_inv}::{TWISTED_API}",
    str(ROOT / "hermes_tx"),
]
pydoctor_url_path = "api/"
