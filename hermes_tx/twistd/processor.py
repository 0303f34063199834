# -*- test-case-name: tests.test_twistd_options -*-
"""
How C{twistd hermes} finds a processor class (C{--processor module:Class})
and makes one: which constructor arguments it gives.
"""

import importlib
import inspect

from twisted.python import usage

from hermes_tx.components import Component
from hermes_tx.exceptions import one_line


def load_processor_class(spec):
    """
    @param spec: C{"module:Class"} (or C{"module.Class"}).
    @return: the class, which is a L{Component} subclass.
    @raise usage.UsageError: it cannot be imported or is not a Component.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise usage.UsageError(f"--processor must look like module:Class, not {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as e:
        raise usage.UsageError(f"cannot import processor {spec!r}: {one_line(e)}")
    if not (inspect.isclass(obj) and issubclass(obj, Component)):
        raise usage.UsageError(f"processor {spec!r} is not a hermes_tx.components.Component subclass")
    return obj


def _init_parameters(cls):
    """
    @return: the names C{cls}'s constructor accepts: C{(names, takes_any)},
        where names are those it or a class before L{Component} in its MRO
        names explicitly, and takes_any tells whether it takes C{**kwargs}.
    """
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    for klass in cls.__mro__:
        if klass is Component:
            break
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(
                n for n, p in inspect.signature(init).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            )
    return names, takes_any


def processor_kwargs(cls, options):
    """
    The keyword arguments C{twistd hermes} gives a processor class: C{output}
    and C{backoff_limit}, each only when the class can take it.

    A constructor that names the argument gets it.  One that takes only
    C{**kwargs} (C{def __init__(self, *a, **kw): super().__init__(*a, **kw)})
    gets it when a class between it and L{Component} names it, or
    L{Component}'s own constructor does (it ends up there).  A
    zero-argument constructor (the seed's style) gets nothing.

    @return: a dict of keyword arguments.
    """
    names, takes_any = _init_parameters(cls)
    component_names = set(inspect.signature(Component.__init__).parameters)
    explicit = set(inspect.signature(cls).parameters)
    offered = {"output": options["output"], "backoff_limit": options["backoff-limit"]}
    return {
        name: value for name, value in offered.items()
        if name in explicit or (takes_any and (name in names or name in component_names))
    }


def make_processor(cls, options):
    """
    Instantiate the processor class with L{processor_kwargs} (or, with
    C{--sink}, the sink for the URL); C{backoff_limit},
    C{shutdown_timeout} and C{execute_timeout} are set on it in any case.
    """
    if options.get("sink"):
        from hermes_tx.sinks import from_url

        processor = from_url(options["sink"], secret_file=options.get("sink-secret-file"))
    else:
        processor = cls(**processor_kwargs(cls, options))
    processor.backoff_limit = options["backoff-limit"]
    processor.shutdown_timeout = options["shutdown-timeout"]
    processor.execute_timeout = options["execute-timeout"] or None
    return processor
