"""
The documentation's pages as the tests read them: their code blocks, and
the files a page shows the reader writing (a C{.. code-block:: python}
whose C{:caption:} is a file name, such as C{orders.py} or C{app.tac}),
written out to a directory of a test's own so that they are run exactly
as the page shows them.
"""

import importlib
import os
import re
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")

_DIRECTIVE = re.compile(r"^(?P<indent>[ ]*)\.\. code-block:: (?P<language>\S+)[ ]*$")
_OPTION = re.compile(r"^[ ]+:(?P<name>[\w-]+):[ ]*(?P<value>.*)$")
_FILE_NAME = re.compile(r"[\w.-]+\.(py|tac)")


def pages():
    """
    @return: C{{path relative to docs/: text}} of every reST page.
    """
    found = {}
    for folder, dirs, files in os.walk(DOCS):
        dirs[:] = [d for d in dirs if not d.startswith("_")]
        for name in files:
            if name.endswith(".rst"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    found[os.path.relpath(path, DOCS)] = f.read()
    return found


def code_blocks(text):
    """
    @return: a list of C{(language, caption, source)} for every
        C{.. code-block::} of reST C{text} (C{caption} C{None} without one;
        C{source} dedented, ending with a newline).
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if not match:
            continue
        indent = len(match.group("indent"))
        options = {}
        while i < len(lines) and _OPTION.match(lines[i]):
            option = _OPTION.match(lines[i])
            options[option.group("name")] = option.group("value").strip()
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or
                                  len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        source = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        blocks.append((match.group("language"), options.get("caption"), source))
    return blocks


def is_file_name(caption):
    """
    @return: whether a code block's caption names a file the reader saves.
    """
    return caption is not None and _FILE_NAME.fullmatch(caption) is not None


def page_files(page):
    """
    @return: C{{file name: source}} of the Python blocks of C{page} (a path
        relative to docs/) whose caption is a file name.
    """
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        text = f.read()
    return {caption: source for language, caption, source in code_blocks(text)
            if language == "python" and is_file_name(caption)}


def write_page_files(folder, *pages):
    """
    Write the files of C{pages} into C{folder} (made if missing).

    @return: the folder's absolute path.
    """
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    for page in pages:
        for name, source in page_files(page).items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write(source)
    return folder


def import_page_module(case, module, *pages):
    """
    Import C{module} from the files of C{pages}, written into a directory of
    the test C{case}'s own, which is on C{sys.path} (first) for the test.

    @return: the module.
    """
    folder = write_page_files(case.mktemp(), *pages)
    case.patch(sys, "path", [folder] + sys.path)
    for name in page_modules(*pages):
        sys.modules.pop(name, None)
        case.addCleanup(sys.modules.pop, name, None)
    return importlib.import_module(module)


def page_modules(*pages):
    """
    @return: the names of the Python modules the files of C{pages} make.
    """
    return [name[:-3] for page in pages for name in page_files(page) if name.endswith(".py")]
