"""
Sphinx directives that write parts of the documentation from the code:

  - C{.. hermes-twistd-options::}: every C{twistd hermes} option, from
    C{hermes_tx.twistd.options.Options} and C{hermes_tx.twistd.options.BOUNDS};
  - C{.. hermes-argparse:: module:function}: every command and option of the
    argument parser C{function()} returns (C{hermes-tx}); while C{module}
    does not exist, a note saying so;
  - C{.. hermes-modules::}: every module of C{hermes_tx}, linked to its API
    page, with the first sentence of its docstring.

It also gives the pages back Sphinx's C{code-block}: pydoctor registers
its own for docstrings (globally, when its Sphinx extension builds the API
reference at C{builder-inited}), which drops a block's C{:caption:} and
language.  Sphinx's is put back for the pages, pydoctor's for the API
reference it writes at C{build-finished}.
"""

import importlib
import importlib.util
import pkgutil
import re
import textwrap

from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

import clireference


def _source(module):
    return getattr(module, "__file__", None)


class TwistdOptions(SphinxDirective):
    """
    The C{twistd hermes} option reference.
    """

    def run(self):
        from hermes_tx.twistd import options as tap

        self.env.note_dependency(_source(tap))
        options = tap.Options()
        synopsis = textwrap.wrap(f"twistd [twistd options] hermes {options.synopsis}", 72,
                                 subsequent_indent="    ", break_on_hyphens=False)
        lines = ["::", ""] + ["   " + line for line in synopsis] + [""]
        lines += [options.longdesc, ""]
        lines += clireference.usage_options_rst(options, "twistd hermes", tap.BOUNDS)
        return self.parse_text_to_nodes("\n".join(lines))


def _find(module_name):
    """
    @return: whether C{module_name} can be imported, without importing it
        (a missing parent package counts as missing).
    """
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


class ArgparseReference(SphinxDirective):
    """
    The reference of an argparse command line.  While the module does not
    exist, the directive's content is shown instead; without content that
    is an error.
    """

    required_arguments = 1
    has_content = True
    option_spec = {"program": directives.unchanged}

    def run(self):
        module_name, _, function = self.arguments[0].partition(":")
        if not _find(module_name):
            if not self.content:
                raise self.error(f"no module {module_name} (and no placeholder content)")
            return self.parse_content_to_nodes(allow_section_headings=True)
        module = importlib.import_module(module_name)
        self.env.note_dependency(_source(module))
        parser = getattr(module, function)()
        lines = clireference.argparse_rst(parser, self.options.get("program"))
        return self.parse_text_to_nodes("\n".join(lines), allow_section_headings=True)


_EPYTEXT = re.compile(r"([CLIBUM])\{([^{}]*)\}")


def first_sentence(docstring):
    """
    @return: the first sentence of an epytext docstring as reST: C{C{x}} and
        C{L{x}} become literals, C{I{x}} emphasis.
    """
    text = " ".join((docstring or "").split())
    text = re.split(r"(?<=[.:;])\s", text, maxsplit=1)[0].rstrip(":;")
    text = text.replace("*", "\\*").replace("`", "\\`")

    def markup(match):
        kind, inner = match.groups()
        if kind == "I":
            return f"*{inner}*"
        if kind == "B":
            return f"**{inner}**"
        return f"``{inner}``"

    return _EPYTEXT.sub(markup, text)


def modules(package_name):
    """
    @return: C{[(name, module)]} for C{package_name} and every module under
        it, sorted by name.
    """
    package = importlib.import_module(package_name)
    found = [(package_name, package)]
    for info in pkgutil.walk_packages(package.__path__, package_name + "."):
        if info.name.rpartition(".")[2] == "__main__":
            continue  # a program: importing it runs it
        found.append((info.name, importlib.import_module(info.name)))
    return sorted(found)


class ModuleList(SphinxDirective):
    """
    A list of every module of a package with its summary.
    """

    required_arguments = 1

    def run(self):
        lines = []
        for name, module in modules(self.arguments[0]):
            self.env.note_dependency(_source(module))
            lines += [f":py:mod:`{name}`", f"    {first_sentence(module.__doc__) or '(no summary)'}", ""]
        return self.parse_text_to_nodes("\n".join(lines))


_CODE_DIRECTIVES = ("code-block", "sourcecode", "code")
_replaced_code_directives = {}


def _sphinx_code_directives(app):
    from sphinx.directives.code import CodeBlock
    from sphinx.directives.patches import Code

    for name in _CODE_DIRECTIVES:
        _replaced_code_directives[name] = directives._directives.get(name)
    directives.register_directive("code-block", CodeBlock)
    directives.register_directive("sourcecode", CodeBlock)
    directives.register_directive("code", Code)


def _pydoctor_code_directives(app, exception):
    for name, directive in _replaced_code_directives.items():
        if directive is not None:
            directives.register_directive(name, directive)


def setup(app):
    # After pydoctor's builder-inited (priority 490), before its
    # build-finished (500).
    app.connect("builder-inited", _sphinx_code_directives, priority=900)
    app.connect("build-finished", _pydoctor_code_directives, priority=100)
    app.add_directive("hermes-twistd-options", TwistdOptions)
    app.add_directive("hermes-argparse", ArgparseReference)
    app.add_directive("hermes-modules", ModuleList)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
