"""
Tests for the documentation's sources (C{docs/}): the command-line
references are generated from the same definitions C{--help} prints, every
example a page shows is run here, and the names the pages rely on (options,
metrics, public classes) exist.  The site itself is built by
C{scripts/docs}, which CI runs after this suite.
"""

import argparse
import ast
import doctest
import importlib
import importlib.util
import inspect
import io
import os
import pkgutil
import re
import shlex

import psycopg2
from twisted.application import service
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial import unittest

import hermes_tx
from hermes_tx import strategies
from hermes_tx.twistd import options as tap
from hermes_tx.client import Client
from hermes_tx.events import Event
from hermes_tx.outcomes import Retry
from hermes_tx.status import StatusService
from hermes_tx.testing import ProcessorHarness
from hermes_tx.twistd.process import ProcessService
from tests.support.docpages import DOCS, ROOT, code_blocks, import_page_module, is_file_name, pages
from tests.support.httpserver import free_port
from tests.support.shared import shared_primary, wait_until


def _load_clireference():
    # docs/_ext is not a package on the path (Sphinx loads it from conf.py).
    spec = importlib.util.spec_from_file_location(
        "clireference", os.path.join(DOCS, "_ext", "clireference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


clireference = _load_clireference()


def documented_options(lines, program):
    """
    @return: the set of option strings (C{--dsn}, C{-d}; not positional
        arguments) of the C{.. option::} directives that follow
        C{.. program:: program} in reST C{lines}, up to the next
        C{.. program::}.
    """
    found, current = set(), None
    for line in lines:
        if line.startswith(".. program:: "):
            current = line[len(".. program:: "):]
        elif line.startswith(".. option:: ") and current == program:
            for form in line[len(".. option:: "):].split(", "):
                flag = re.split(r"[ =]", form, maxsplit=1)[0]
                if flag.startswith("-"):
                    found.add(flag)
    return found


def unescape(text):
    """
    @return: reST text as read (escapes dropped, whitespace collapsed).
    """
    return " ".join(re.sub(r"\\(.)", r"\1", text).split())


_HELP_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def options_in_help(text):
    """
    @return: the option strings in the option lines of a C{--help} text.
    """
    found = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            found.update(_HELP_OPTION.findall(stripped.split("  ")[0]))
    return found


class TwistdReferenceTests(unittest.TestCase):
    """
    The C{twistd hermes} reference (C{.. hermes-twistd-options::}) against
    L{hermes_tx.twistd.options.Options}.
    """

    def setUp(self):
        self.lines = clireference.usage_options_rst(tap.Options(), "twistd hermes", tap.BOUNDS)
        self.text = unescape("\n".join(self.lines))

    def test_same_options_as_help(self):
        """
        Every option C{twistd hermes --help} prints, long and short, is an
        C{.. option::} of the reference, and nothing else is.
        """
        in_help = options_in_help(tap.Options().getUsage(width=200))
        self.assertIn("--channel", in_help)
        self.assertIn("-c", in_help)
        self.assertEqual(documented_options(self.lines, "twistd hermes"), in_help)

    def test_help_texts(self):
        """
        Each option's help text, as C{--help} has it, is in the reference.
        """
        options = tap.Options()
        for name, doc in options.docs.items():
            self.assertIn(unescape(doc).rstrip("."), self.text, name)

    def test_defaults_and_bounds(self):
        """
        Every default of C{optParameters} and every entry of C{BOUNDS}
        appears in the reference.
        """
        for name, short, default, *rest in tap.Options.optParameters:
            if default is not None and "(default" not in rest[0]:
                self.assertIn(f"Default: ``{default}``", self.text, name)
        for name, (least, most, unit) in tap.BOUNDS.items():
            self.assertIn(f"--{name}", self.text)
            self.assertIn(f"From {clireference._number(least)} to {clireference._number(most)}",
                          self.text, name)

    def test_page_uses_directive(self):
        """
        The reference page is the generated one.
        """
        self.assertIn(".. hermes-twistd-options::", pages()[os.path.join("reference", "twistd-hermes.rst")])


def sample_parser():
    """
    @return: an argparse parser with what the generator must handle:
        sub-commands, shared parents, required options, defaults in help,
        choices, C{nargs}, a mutually exclusive group, a positional.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="the DSN")
    common.add_argument("--schema", default="hermes", help="the schema (default: %(default)s)")
    parser = argparse.ArgumentParser(prog="tool", description="A tool.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    cmd = commands.add_parser("copy", parents=[common], help="copy a table")
    cmd.add_argument("--table", required=True, help="the table")
    cmd.add_argument("--mode", choices=["fast", "safe"], default="safe", help="how")
    cmd.add_argument("target", help="where to")
    cmd = commands.add_parser("purge", parents=[common], help="purge rows")
    group = cmd.add_mutually_exclusive_group()
    group.add_argument("--id", nargs="+", type=int, metavar="ID", help="these rows")
    group.add_argument("--all", action="store_true", help="every row")
    return parser


class ArgparseReferenceTests(unittest.TestCase):
    """
    L{clireference.argparse_rst} against the parsers' own C{--help}.
    """

    def assertMatchesHelp(self, parser, program):
        """
        Each (sub-)command's options in C{format_help()} are its
        C{.. option::} entries, with their expanded help texts.
        """
        lines = clireference.argparse_rst(parser, program)
        text = unescape("\n".join(lines))
        subcommands = clireference._subcommands(parser)
        self.assertEqual(documented_options(lines, program), options_in_help(parser.format_help()))
        for name, help_text, subparser in subcommands:
            self.assertIn(f"``{program} {name}``", lines)
            self.assertEqual(documented_options(lines, f"{program} {name}"),
                             options_in_help(subparser.format_help()), name)
            for action in subparser._actions:
                if action.help:
                    expanded = subparser._get_formatter()._expand_help(action)
                    self.assertIn(unescape(expanded).rstrip("."), text)
        return lines, text

    def test_sample_parser(self):
        """
        Sub-commands, parents, required options, choices, defaults, a
        mutually exclusive group and a positional argument all come out.
        """
        lines, text = self.assertMatchesHelp(sample_parser(), "tool")
        self.assertIn("the schema (default: hermes)", text)
        self.assertIn(".. option:: --id ID [ID ...]", lines)
        self.assertIn(".. option:: target", lines)
        self.assertIn("One of ``fast``, ``safe``. Default: ``safe``.", text)
        self.assertIn("Not together with ``--all``.", text)
        self.assertIn("the table. Required.", text)

    def test_hermes_tx(self):
        """
        The C{hermes-tx} page takes its reference from
        C{hermes_tx.outbox.cli.build_parser} when that exists (and it then
        matches C{--help}); until then the page shows its placeholder.
        """
        page = pages()[os.path.join("reference", "hermes-tx.rst")]
        self.assertIn(".. hermes-argparse:: hermes_tx.outbox.cli:build_parser", page)
        try:
            spec = importlib.util.find_spec("hermes_tx.outbox.cli")
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            self.assertIn("Placeholder", page)
            return
        cli = importlib.import_module("hermes_tx.outbox.cli")
        self.assertMatchesHelp(cli.build_parser(), cli.build_parser().prog)


_LITERALINCLUDE = re.compile(r"^\s*\.\. literalinclude:: (\S+)", re.M)
_OTHER_PYTHON = re.compile(r"^\s*\.\. (code|sourcecode|highlight):: (python|py|pycon)\b", re.M)

#: every file a page includes, and the test here or elsewhere that runs it
INCLUDED = {
    "examples/hermes.tac": "tests.test_client.TacCompositionTests, "
                           "tests.test_docs_run.RecipeTests.test_plain_tac_ends_by_its_signal",
    "examples/service.tac": "ExamplesTests.test_service_tac",
    "examples/ops/hermes.service": "OperationsFilesTests.test_systemd_unit",
    "examples/ops/logrotate.conf": "OperationsFilesTests.test_logrotate",
    "examples/ops/prometheus.yml": "OperationsFilesTests.test_prometheus_metrics",
    "examples/ops/hermes-rules.yml": "OperationsFilesTests.test_prometheus_metrics",
    # run for real by bench/patroni.py (root, etcd and Patroni needed)
    "examples/patroni/etcd.sh": "tests.test_patroni_files",
    "examples/patroni/node1.yml": "tests.test_patroni_files",
    "examples/patroni/node2.yml": "tests.test_patroni_files",
    "examples/patroni/cluster.dsn": "tests.test_patroni_files",
    "examples/patroni/node1.dsn": "tests.test_patroni_files",
    "examples/patroni/node2.dsn": "tests.test_patroni_files",
    "examples/patroni/hermes.sh": "tests.test_patroni_files",
}


#: what PAGE_FILES says of the seed's code, shown beside its port: it
#: needs the seed (Python 2, multiprocessing), so it is only parsed
SEED_CODE = "not run: the seed's code (PagesTests.test_no_untested_python_blocks parses it)"

#: every Python block of a page (its page and caption), and the test that
#: runs it from the files the page shows
PAGE_FILES = {
    ("processors.rst", "printer.py"): "ExamplesTests.test_printer, "
                                      "tests.test_docs_run.RecipeTests.test_printer",
    ("processors.rst", "tables.py"): "TableExamplesTests, tests.test_docs_run.RecipeTests.test_app_tac",
    ("processors.rst", "failfast.py"): "ExamplesTests.test_failfast",
    ("processors.rst", "orders.py"): "tests.test_docs_install",
    ("processors.rst", "test_orders.py"): "tests.test_docs_install",
    ("composing.rst", "app.tac"): "tests.test_docs_run.RecipeTests.test_app_tac",
    ("porting.rst", "the seed's wordindexer.py (hermes 0.2, Python 2)"): SEED_CODE,
    ("porting.rst", "wordindexer.py"): "tests.test_docs_run.RecipeTests.test_ported_processor",
}


class PagesTests(unittest.TestCase):
    """
    What the pages show is run: Python only as doctests or as included
    files that a test runs.
    """

    def test_included_files_are_tested(self):
        """
        Every C{literalinclude} names a file that exists and is in
        L{INCLUDED}; every file there is included by some page.
        """
        included = set()
        for name, text in pages().items():
            for target in _LITERALINCLUDE.findall(text):
                path = os.path.normpath(os.path.join(os.path.dirname(os.path.join("docs", name)), target))
                included.add(path)
                self.assertTrue(os.path.isfile(os.path.join(ROOT, path)), f"{name}: {target}")
        self.assertEqual(included, set(INCLUDED))

    def test_no_untested_python_blocks(self):
        """
        Python in a page is a doctest (run by L{DoctestTests}), an included
        file (L{INCLUDED}), or a C{.. code-block:: python} with a caption
        naming the file the reader saves, which L{PAGE_FILES} names the
        test of; every entry there is on its page.
        """
        found = set()
        for name, text in pages().items():
            self.assertEqual(_OTHER_PYTHON.findall(text), [], name)
            for language, caption, source in code_blocks(text):
                if language not in ("python", "py", "pycon"):
                    continue
                self.assertEqual(language, "python", name)
                self.assertIsNotNone(caption, f"{name}: a Python block without a caption")
                found.add((name, caption))
                compile(source, caption, "exec")  # the seed's code too: at least it parses
        self.assertEqual(found, set(PAGE_FILES))
        for (name, caption), test in PAGE_FILES.items():
            self.assertEqual(is_file_name(caption), test != SEED_CODE, (name, caption))

    def test_no_examples_package(self):
        """
        Nothing a page shows imports the repository's C{examples} folder as
        a package (a pip install has none) or names it in C{--processor}:
        not a code block, a doctest or an included file.
        """
        pattern = re.compile(r"(from|import)\s+examples\b|--processor[ =]examples\.")
        texts = dict(pages())
        for path in INCLUDED:
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                texts[path] = f.read()
        for name, text in texts.items():
            self.assertIsNone(pattern.search(text), name)
        self.assertFalse(os.path.exists(os.path.join(ROOT, "examples", "__init__.py")))

    def test_twistd_command_lines(self):
        """
        Every C{twistd ... hermes ...} command line in a page or in the
        systemd unit uses only options C{twistd hermes} has.
        """
        texts = list(pages().values())
        with open(os.path.join(ROOT, "examples", "ops", "hermes.service"), encoding="utf-8") as f:
            texts.append(f.read())
        known = set(tap.Options().synonyms) | {"help", "version"}
        seen = 0
        for text in texts:
            for args in hermes_command_lines(text):
                seen += 1
                for arg in args:
                    if arg.startswith("--"):
                        self.assertIn(arg[2:].split("=")[0], known, " ".join(args))
                    elif re.fullmatch(r"-[A-Za-z]", arg):
                        self.assertIn(arg[1:], known, " ".join(args))
        self.assertGreaterEqual(seen, 10)


def hermes_command_lines(text):
    """
    @return: for every command line in C{text} that runs C{twistd ...
        hermes}, the arguments after C{hermes} (continuation lines joined).
    """
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ").removeprefix("# ").removeprefix("ExecStart=")
        if "twistd" not in line or " hermes " not in f" {line} " or line.startswith(("``", ":")):
            continue
        try:
            words = shlex.split(line.split("#")[0].split("|")[0])
        except ValueError:
            continue
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words.pop(0)  # PYTHONPATH=. twistd ...
        if not words or not re.fullmatch(r"[\w./-]*twistd", words[0]):
            continue
        found.append(words[words.index("hermes") + 1:])
    return found


class DoctestTests(unittest.TestCase):
    """
    The C{>>>} examples of each page, run as doctests.
    """

    def run_page(self, name):
        with open(os.path.join(DOCS, name), encoding="utf-8") as f:
            text = f.read()
        test = doctest.DocTestParser().get_doctest(text, {}, name, name, 0)
        self.assertTrue(test.examples, f"{name} has no doctest")
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        out = io.StringIO()
        runner.run(test, out=out.write)
        self.assertEqual(runner.failures, 0, out.getvalue())

    def test_every_page_with_doctests_is_run(self):
        """
        The pages with C{>>>} examples are the ones tested below.
        """
        with_doctests = {name for name, text in pages().items() if "\n>>> " in text}
        self.assertEqual(with_doctests, {"concepts.rst", "sinks.rst", "operations.rst"})

    def test_concepts(self):
        self.run_page("concepts.rst")

    def test_sinks(self):
        self.run_page("sinks.rst")

    def test_operations(self):
        self.run_page("operations.rst")


class ExamplesTests(unittest.TestCase):
    """
    The modules the pages show and the .tac files they include.
    """

    def test_printer(self):
        """
        The page's printer.py logs notifications and says it catches up on
        start and resync.
        """
        printer = import_page_module(self, "printer", "processors.rst")
        processor = printer.Printer()
        processor.clock = task.Clock()  # a seed-style constructor takes none
        harness = ProcessorHarness(processor)
        self.addCleanup(harness.stop)
        results = harness.feed(Event("start"), Event("notification", "jobs", "42"), Event("resync"))
        self.assertEqual([r.outcome for r in results], ["done"] * 3)
        self.assertEqual(harness.lines, ["start: catching up", "#1 jobs: 42", "resync: catching up"])

    def test_failfast(self):
        """
        The page's FailFast keeps the common strategy's answers for
        expected errors and terminates on the others.
        """
        failfast = import_page_module(self, "failfast", "processors.rst")
        strategy = failfast.FailFast()
        self.assertEqual(strategy.handle_exception(psycopg2.OperationalError("gone")),
                         (True, strategies.BACKOFF))
        self.assertEqual(strategy.handle_exception(psycopg2.ProgrammingError("bad SQL")),
                         (True, strategies.CONTINUE))
        self.assertEqual(strategy.handle_exception(KeyError("id")), (False, strategies.TERMINATE))

    def test_service_tac(self):
        """
        examples/service.tac builds, without a server, the tree the page
        describes: a ProcessService at the top holding the Client (a
        listener on C{items} decoding JSON, the JSON-lines processor,
        reopened on SIGHUP) and the status service.
        """
        from hermes_tx.processors import JsonLinesProcessor

        port = free_port()
        env = {"HERMES_DSN": "host=127.0.0.1 port=1 dbname=app", "HERMES_STATUS_PORT": str(port),
               "HERMES_OUTPUT": os.path.abspath(self.mktemp())}
        for name, value in env.items():
            self.addCleanup(os.environ.__setitem__, name, os.environ[name]) if name in os.environ \
                else self.addCleanup(os.environ.pop, name, None)
            os.environ[name] = value
        application = service.loadApplication(os.path.join(ROOT, "examples", "service.tac"), "python")
        top = service.IService(application).getServiceNamed("process")
        self.assertIsInstance(top, ProcessService)
        hermes = top.getServiceNamed("hermes")
        status = top.getServiceNamed("status")
        self.assertIsInstance(hermes, Client)
        self.assertIsInstance(status, StatusService)
        self.assertEqual(hermes.listener.channels, ["items"])
        self.assertEqual(hermes.listener.payload_format, "json")
        self.assertIsInstance(hermes.processor, JsonLinesProcessor)
        self.assertEqual([name for name, _ in top.reopeners], ["output file"])
        self.assertEqual(len(hermes._failure_observers), 1)


class TableExamplesTests(unittest.TestCase):
    """
    The page's tables.py against a throwaway server.
    """

    def setUp(self):
        self.cluster = shared_primary()
        self.addCleanup(self.cluster.execute, "DROP TABLE IF EXISTS hermes_audit, hermes_latest")
        self.tables = import_page_module(self, "tables", "processors.rst")

    def count(self, table):
        """
        @return: the rows in C{table}, or C{None} before it exists.
        """
        [(exists,)] = self.cluster.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        return self.cluster.execute(f"SELECT count(*) FROM {table}")[0][0] if exists else None

    @defer.inlineCallbacks
    def run_processor(self, processor, events, done):
        processor.startService()
        try:
            processor.queue.put_many(events)
            yield wait_until(done, what="rows written")
        finally:
            yield processor.stopService()

    @defer.inlineCallbacks
    def test_audit(self):
        """
        Audit makes its table in set_up and writes one row per event, a
        notification's channel or a change's topic as its source.
        """
        from hermes_tx.events import Change

        events = [Event("start"), Event("notification", "jobs", "a 'quoted' payload"),
                  Event("notification", "Jobs", ""),
                  Change(7, "items", "1", 0, 0.0, '{"id": 1}')]
        yield self.run_processor(self.tables.Audit(self.cluster.dsn()), events,
                                 lambda: self.count("hermes_audit") == 4)
        rows = self.cluster.execute("SELECT kind, source, payload FROM hermes_audit ORDER BY id")
        self.assertEqual(rows, [("start", None, None), ("notification", "jobs", "a 'quoted' payload"),
                                ("notification", "Jobs", ""), ("change", "items", '{"id": 1}')])

    @defer.inlineCallbacks
    def test_audit_unreachable_is_retry(self):
        """
        With no server to write to, Audit's execute fails with Retry, so
        the event is executed again later rather than skipped.
        """
        audit = self.tables.Audit(f"host=127.0.0.1 port={free_port()} dbname=x connect_timeout=5")
        yield self.assertFailure(audit.execute(Event("notification", "jobs", "x")), Retry)
        yield audit.db.disconnect()

    def test_retry_if_unreachable_passes_other_errors(self):
        """
        Errors that are not about the connection go to the error strategy
        unchanged.
        """
        failure = Failure(psycopg2.ProgrammingError("syntax error"))
        self.assertIs(self.tables.retry_if_unreachable(failure), failure)

    @defer.inlineCallbacks
    def test_latest(self):
        """
        Latest keeps the last payload per key, written a batch at a time;
        a payload that is not an object with a key is rejected alone.
        """
        def notification(payload, data):
            event = Event("notification", "items", payload)
            event.data = data
            return event

        events = [Event("start"),
                  notification('{"key": 1, "v": "a"}', {"key": 1, "v": "a"}),
                  notification('[1]', [1]),
                  notification('{"key": 2, "v": "b"}', {"key": 2, "v": "b"}),
                  notification('{"key": 1, "v": "c"}', {"key": 1, "v": "c"})]
        latest = self.tables.Latest(self.cluster.dsn())
        yield self.run_processor(latest, events, lambda: self.count("hermes_latest") == 2)
        rows = self.cluster.execute("SELECT key, value->>'v' FROM hermes_latest ORDER BY key")
        self.assertEqual(rows, [("1", "c"), ("2", "b")])


class OperationsFilesTests(unittest.TestCase):
    """
    The operations files the pages include refer to what exists.
    """

    def read(self, name):
        with open(os.path.join(ROOT, "examples", "ops", name), encoding="utf-8") as f:
            return f.read()

    def test_systemd_unit(self):
        """
        The unit's command line parses as C{twistd hermes} options (files
        and paths aside), runs in the foreground, and the unit does not
        restart on a usage error (status 2).
        """
        unit = self.read("hermes.service")
        [args] = hermes_command_lines(unit)
        self.assertIn("--dsn-file", args)
        self.assertIn("--nodaemon", unit)
        self.assertIn("RestartPreventExitStatus=2", unit)
        args = [arg for arg in args]
        dsn_file = self.mktemp()
        with open(dsn_file, "w") as f:
            f.write("host=127.0.0.1 dbname=app\n")
        args[args.index("--dsn-file") + 1] = dsn_file
        options = tap.Options()
        options.parseOptions(args)
        self.assertEqual(options["channels"], ["jobs"])
        self.assertEqual(options["status-port"], 9181)

    def test_logrotate(self):
        """
        The logrotate snippet sends SIGHUP, which reopens the files.
        """
        self.assertIn("kill -HUP", self.read("logrotate.conf"))

    def test_prometheus_metrics(self):
        """
        Every C{hermes_*} metric the pages and the Prometheus files name
        is one the status endpoint or the sink collector exports.
        """
        exported = set()
        for module in (os.path.join("status", "metrics.py"), os.path.join("sinks", "metrics.py")):
            with open(os.path.join(ROOT, "hermes_tx", module), encoding="utf-8") as f:
                for name in re.findall(r'"(hermes_[a-z_]+)"', f.read()):
                    exported.update([name, name + "_total", name + "_bucket", name + "_sum",
                                     name + "_count"])
        texts = list(pages().values()) + [self.read("prometheus.yml"), self.read("hermes-rules.yml")]
        named = set()
        for text in texts:
            # (hermes_audit and hermes_latest: the tables of processors.rst)
            named.update(re.findall(r"(?<![\w.])(hermes_(?!tx\b|audit\b|latest\b)[a-z_]+)\b(?![.(])",
                                    text))
        self.assertIn("hermes_outbox_oldest_age_seconds", named)
        self.assertEqual(named - exported, set())


class PublicNamesTests(unittest.TestCase):
    """
    What the API reference shows has something to show.
    """

    def test_docstrings(self):
        """
        Every module of hermes_tx, and every public class and function
        defined in one, has a docstring.
        """
        missing = []
        for info in pkgutil.walk_packages(hermes_tx.__path__, "hermes_tx."):
            if info.name.endswith(".__main__"):
                continue  # a program: importing it runs it
            module = importlib.import_module(info.name)
            if not module.__doc__:
                missing.append(info.name)
            for name, value in vars(module).items():
                if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                    continue
                if (inspect.isclass(value) or inspect.isfunction(value)) and not value.__doc__:
                    missing.append(f"{info.name}.{name}")
        self.assertEqual(missing, [])

    def test_seed_vocabulary_first(self):
        """
        The API overview names the seed's vocabulary first, in the seed's
        order, and each name is importable.
        """
        seed = ["hermes_tx.client.Client", "hermes_tx.components.Component",
                "hermes_tx.connectors.PostgresConnector",
                "hermes_tx.listeners.PostgresNotificationListener",
                "hermes_tx.strategies.AbstractErrorStrategy",
                "hermes_tx.strategies.CommonErrorStrategy",
                "hermes_tx.exceptions.InvalidConfigurationException"]
        page = pages()[os.path.join("reference", "api.rst")]
        named = re.findall(r"^:py:(?:class|func|mod):`([\w.]+)`", page, re.M)
        self.assertEqual(named[:len(seed)], seed)
        for dotted in named:
            module, _, name = dotted.rpartition(".")
            try:
                importlib.import_module(dotted)  # a module (:py:mod:)
            except ImportError:
                self.assertTrue(hasattr(importlib.import_module(module), name), dotted)


def layers_of_page():
    """
    @return: C{{group: layer}} from the layer table of architecture.rst,
        where a group is a top-level module or subpackage of hermes_tx
        (C{"client"}, C{"runtime"} ...).
    """
    text = pages()["architecture.rst"]
    table = text.split("\nLayers\n------\n", 1)[1].split("\n\n=====", 1)[1].split("\n\n", 1)[0]
    layers, layer = {}, None
    for line in table.splitlines():
        number = re.match(r"(\d+)\s", line)
        if number:
            layer = int(number.group(1))
        for group in re.findall(r":py:mod:`hermes_tx\.(\w+)`", line):
            layers[group] = layer
    return layers


def imports_between_groups():
    """
    @return: C{{(importer group, imported group): an example module}} for
        every C{import} (at any depth of a module) of one part of
        hermes_tx by another.
    """
    package = os.path.join(ROOT, "hermes_tx")
    found = {}
    for folder, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, package)[:-3].split(os.sep)
            if parts == ["__init__"]:
                continue
            group = parts[0]
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                else:
                    continue
                for target in targets:
                    bits = target.split(".")
                    if bits[0] == "hermes_tx" and len(bits) > 1 and _is_group(bits[1]):
                        found.setdefault((group, bits[1]), "/".join(parts))
    return found


def _is_group(name):
    package = os.path.join(ROOT, "hermes_tx")
    return os.path.isdir(os.path.join(package, name)) or os.path.isfile(os.path.join(package, name + ".py"))


class ArchitectureTests(unittest.TestCase):
    """
    The layers architecture.rst shows are those of the code.
    """

    def test_every_part_has_a_layer(self):
        """
        Every top-level module and subpackage of hermes_tx is in the table,
        once.
        """
        package = os.path.join(ROOT, "hermes_tx")
        groups = {name[:-3] if name.endswith(".py") else name for name in os.listdir(package)
                  if (name.endswith(".py") and name != "__init__.py")
                  or os.path.isfile(os.path.join(package, name, "__init__.py"))}
        self.assertEqual(set(layers_of_page()), groups)
        self.assertIn(0, layers_of_page().values())

    def test_no_import_runs_up_a_layer(self):
        layers = layers_of_page()
        upward = {f"{where} imports hermes_tx.{imported} (layer {layers[imported]} > "
                  f"{layers[importer]})"
                  for (importer, imported), where in imports_between_groups().items()
                  if layers[imported] > layers[importer]}
        self.assertEqual(upward, set())

    def test_no_import_circle(self):
        edges = {}
        for importer, imported in imports_between_groups():
            if importer != imported:
                edges.setdefault(importer, set()).add(imported)
        done, path = set(), []

        def visit(group):
            self.assertNotIn(group, path, " -> ".join(path + [group]))
            if group in done:
                return
            path.append(group)
            for other in sorted(edges.get(group, ())):
                visit(other)
            path.pop()
            done.add(group)

        for group in sorted(edges):
            visit(group)
