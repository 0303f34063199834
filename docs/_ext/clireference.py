"""
Command-line references in reStructuredText, made from the definitions that
C{--help} prints, so the documentation cannot drift from them.

  - L{usage_options_rst}: a C{twisted.python.usage.Options} (C{twistd hermes}):
    the same option list C{getUsage()} prints (C{optParameters},
    C{optFlags}, C{opt_*} methods and their synonyms), with defaults and,
    from a C{BOUNDS} mapping, the least and most each number may be.
  - L{argparse_rst}: any C{argparse.ArgumentParser} (C{hermes-tx}), its
    sub-commands included.

Both write Sphinx C{.. program::} and C{.. option::} directives, so the
narrative pages link to an option with C{:option:} and a link to an option
that does not exist breaks the build.  Nothing here needs Sphinx: the tests
import it to check the references against C{--help}.
"""

import argparse
import textwrap

_INDENT = "   "


def _literal(value):
    """
    @return: C{value} as inline reST literal text.
    """
    text = str(value)
    return f"``{text}``" if text.strip() else f"``{text!r}``"


def _number(value):
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def _paragraph(text):
    """
    @return: C{text} (a docstring or help string) as one reST paragraph,
        indented as the body of a directive; a backslash or a markup
        character stays literal.
    """
    words = " ".join(textwrap.dedent(text or "").split())
    if not words:
        return []
    if not words.endswith((".", "!", "?", ")")):
        words += "."
    for char in "\\*`|_":
        words = words.replace(char, "\\" + char)
    return [_INDENT + line for line in textwrap.wrap(words, 76)]


def usage_options(options, bounds=None):
    """
    The options of a C{usage.Options} instance, as its C{getUsage()} lists
    them.

    @param options: a C{twisted.python.usage.Options} instance.
    @param bounds: C{{long name: (least, most, unit)}}, or L{None}.
    @return: a list of dicts with C{long}, C{short} (or L{None}), C{takes}
        (True for an option with a value), C{doc}, C{default} (L{None} for
        none, and for an C{opt_*} method), C{bounds} (a tuple or L{None}).
    """
    bounds = bounds or {}
    short = {}
    for key, long in options.synonyms.items():
        if key != long and len(key) == 1:
            short[long] = key
    found = []
    for name in options.longOpt:
        takes = name.endswith("=")
        long = name.rstrip("=")
        found.append({
            "long": long,
            "short": short.get(long),
            "takes": takes,
            "doc": options.docs.get(long) or "",
            "default": options.defaults.get(long),
            "bounds": bounds.get(long),
        })
    return found


def _metavar(option):
    """
    @return: the placeholder shown after an option that takes a value: its
        unit when it has bounds in seconds, else the last word of its name.
    """
    unit = (option["bounds"] or (None, None, ""))[2]
    if unit == "seconds":
        return "SECONDS"
    if unit == "events":
        return "N"
    return option["long"].rsplit("-", 1)[-1].upper()


def usage_options_rst(options, program, bounds=None):
    """
    @param options: a C{twisted.python.usage.Options} instance.
    @param program: the program's name, as C{:option:} references give it
        (C{"twistd hermes"}).
    @param bounds: as for L{usage_options}.
    @return: reST lines: a C{.. program::} and an C{.. option::} per
        option, each with its help text, default and bounds.
    """
    lines = [f".. program:: {program}", ""]
    for option in usage_options(options, bounds):
        forms = []
        if option["short"]:
            forms.append("-" + option["short"] + (" " + _metavar(option) if option["takes"] else ""))
        forms.append("--" + option["long"] + ("=" + _metavar(option) if option["takes"] else ""))
        lines += [f".. option:: {', '.join(forms)}", ""]
        facts = []
        if option["default"] is not None and "(default" not in option["doc"]:
            facts.append(f"Default: {_literal(option['default'])}.")
        if option["bounds"]:
            least, most, unit = option["bounds"]
            facts.append(f"From {_number(least)} to {_number(most)} {unit}".rstrip() + ".")
        lines += _body(option["doc"], facts)
    return lines


def _body(text, facts):
    """
    @return: the reST lines of an option's body: its help text, then the
        facts (default, bounds ...) as a second paragraph.
    """
    lines = _paragraph(text)
    if facts:
        lines += ([""] if lines else []) + [_INDENT + " ".join(facts)]
    return lines + [""]


def _subcommands(parser):
    """
    @return: C{[(name, help, subparser)]} for the parser's sub-commands, in
        the order they were added (empty without sub-commands).
    """
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                if subparser not in [p for _, _, p in found]:
                    found.append((name, helps.get(name), subparser))
    return found


def argparse_options(parser):
    """
    The options and positional arguments of one parser (not of its
    sub-commands).

    @return: a list of dicts with C{forms} (the option strings, each with
        its metavar), C{flags} (the option strings alone, empty for a
        positional argument), C{help} (C{%(default)s} and the like
        expanded), C{required}, C{default} (L{None} when there is none to
        show), C{choices} and C{exclusive} (the other options of its
        mutually exclusive group).
    """
    formatter = parser._get_formatter()
    groups = {}
    for group in parser._mutually_exclusive_groups:
        for action in group._group_actions:
            groups[action] = [a for a in group._group_actions if a is not action]
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            if action.nargs == 0:
                forms = list(action.option_strings)
            else:
                args = formatter._format_args(action, action.dest.upper())
                forms = [f"{flag} {args}" for flag in action.option_strings]
        else:
            forms = [formatter._format_args(action, action.dest)]
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0
        found.append({
            "forms": forms,
            "flags": list(action.option_strings),
            "help": formatter._expand_help(action) if action.help else "",
            "required": action.required and bool(action.option_strings),
            "default": action.default if shown else None,
            "choices": list(action.choices) if action.choices else None,
            "exclusive": [a.option_strings[0] for a in groups.get(action, []) if a.option_strings],
        })
    return found


def _usage(parser, width=76):
    """
    @return: the parser's usage lines as argparse wraps them at C{width}
        columns, without the C{usage:} prefix.
    """
    formatter = parser.formatter_class(prog=parser.prog, width=width)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip("\n").splitlines()


def argparse_rst(parser, program=None):
    """
    @param parser: an C{argparse.ArgumentParser}.
    @param program: the name references use (default: the parser's
        C{prog}).
    @return: reST lines: for the parser and then each sub-command (a
        section titled with its name), its usage line, description,
        C{.. program::} and an C{.. option::} per option or argument.
    """
    program = program or parser.prog
    lines = _parser_rst(parser, program)
    for name, help_text, subparser in _subcommands(parser):
        title = f"{program} {name}"
        lines += [f"``{title}``", "-" * (len(title) + 4), ""]
        lines += [line.strip() for line in _paragraph(help_text)] + [""]
        lines += _parser_rst(subparser, title)
    return lines


def _parser_rst(parser, program):
    lines = ["::", ""] + [_INDENT + line for line in _usage(parser)] + [""]
    if parser.description:
        lines += [line.strip() for line in _paragraph(parser.description)] + [""]
    lines += [f".. program:: {program}", ""]
    for option in argparse_options(parser):
        lines += [f".. option:: {', '.join(option['forms'])}", ""]
        facts = []
        if option["required"]:
            facts.append("Required.")
        if option["choices"]:
            facts.append("One of " + ", ".join(_literal(c) for c in option["choices"]) + ".")
        if option["default"] is not None and "(default" not in option["help"]:
            facts.append(f"Default: {_literal(option['default'])}.")
        if option["exclusive"]:
            facts.append("Not together with " + ", ".join(_literal(f) for f in option["exclusive"]) + ".")
        lines += _body(option["help"], facts)
    return lines
