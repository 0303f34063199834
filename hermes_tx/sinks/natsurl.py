# -*- test-case-name: tests.test_sink_nats -*-
"""
What a NATS sink URL says (L{hermes_tx.sinks.nats.NatsSink}): the subject
template, the stream, the credentials and the TLS context, each checked
when the sink is made (L{hermes_tx.sinks.urls.SinkURLError}, one line,
redacted).
"""

import ssl

from hermes_tx.exceptions import one_line
from hermes_tx.sinks.urls import SinkURLError, read_secret

#: query parameters of the sink URL that are not secret
URL_PARAMS = ("stream", "duplicate_window", "ca_file", "cert_file", "key_file")
#: what may stand for the topic in the subject
PLACEHOLDER = "{topic}"
#: characters no stream name may hold
STREAM_NAME_FORBIDDEN = frozenset(">*. /\\\t\r\n")
#: the duplicate window a stream the sink makes gets, in seconds (the
#: server's own default)
DEFAULT_DUPLICATE_WINDOW = 120


def bad_subject(subject):
    """
    @return: why C{subject} cannot be published to, or C{None} when it can:
        not empty, no whitespace, no empty token, no wildcard token.
    """
    if not subject:
        return "it is empty"
    if any(c.isspace() for c in subject):
        return "it holds whitespace"
    tokens = subject.split(".")
    if "" in tokens:
        return "it has an empty token"
    if "*" in tokens or ">" in tokens:
        return "it has a wildcard token"
    return None


def template_of(parsed):
    """
    @return: the subject template of the URL C{parsed}: its path, where
        C{{topic}} stands for a whole token.
    @raise SinkURLError: there is no usable subject.
    """
    template = parsed.path
    if not template:
        raise SinkURLError(f"sink URL {parsed.redacted} names no subject (nats://host:4222/SUBJECT)")
    tokens = template.split(".")
    if any(PLACEHOLDER in t and t != PLACEHOLDER for t in tokens) or \
            "{" in template.replace(PLACEHOLDER, "") or "}" in template.replace(PLACEHOLDER, ""):
        raise SinkURLError(f"sink URL {parsed.redacted}: the subject may use {PLACEHOLDER} as a "
                           "whole token only (SUBJECT.{topic})")
    why = bad_subject(template.replace(PLACEHOLDER, "x"))
    if why is not None:
        raise SinkURLError(f"sink URL {parsed.redacted}: the subject cannot be used: {why}")
    return template


def stream_subject(template):
    """
    @return: the subject filter a stream made for C{template} captures:
        C{{topic}} as C{>} when it is the last token, else as C{*}.
    """
    tokens = template.split(".")
    last = len(tokens) - 1
    return ".".join((">" if i == last else "*") if t == PLACEHOLDER else t
                    for i, t in enumerate(tokens))


def stream_of(parsed):
    """
    @return: the stream C{?stream=} names, or C{None}.
    @raise SinkURLError: not a name JetStream takes.
    """
    stream = parsed.params.get("stream") or None
    if stream is not None and STREAM_NAME_FORBIDDEN.intersection(stream):
        raise SinkURLError(f"sink URL {parsed.redacted}: a stream name cannot hold "
                           "whitespace, '.', '*', '>', '/' or '\\'")
    return stream


def tls_context(parsed):
    """
    @return: the C{ssl.SSLContext} for the URL's C{ca_file}, C{cert_file}
        and C{key_file} (the system's trusted certificates without
        C{ca_file}), or C{None} for C{nats://} without any of them.
    @raise SinkURLError: a file cannot be used.
    """
    ca_file, cert_file, key_file = (parsed.params.get(n) or None
                                    for n in ("ca_file", "cert_file", "key_file"))
    if parsed.scheme != "tls" and not (ca_file or cert_file):
        return None
    if key_file and not cert_file:
        raise SinkURLError(f"sink URL {parsed.redacted}: key_file needs cert_file")
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise SinkURLError(f"sink URL {parsed.redacted}: cannot use its certificate files: "
                           f"{one_line(e)}") from None
    return context


def credentials(parsed, secret_file=None, password=None):
    """
    @param parsed: the L{SinkURL <hermes_tx.sinks.urls.SinkURL>}.
    @param secret_file: a file holding the password (the token when the
        URL names no user).
    @param password: the password or token, instead of the URL's.
    @return: C{(options, secret)}: nats-py's C{connect} options (C{user}
        and C{password}, or C{token}, or none) and the secret to scrub.
        A user name alone (C{nats://TOKEN@host}) is a token.
    """
    if secret_file is not None:
        password = read_secret(secret_file)
    elif password is None:
        password = parsed.password
    user = parsed.username or None
    if user is not None and not password:
        user, password = None, user
    if user is not None:
        return {"user": user, "password": password}, password
    return ({"token": password} if password else {}), password
