"""
Check every link inside the built site: each relative C{href} or C{src} of
every HTML page must name a file that exists and, from a Sphinx page (not
under C{api/}), with a C{#fragment}, an element with that C{id} (or an
anchor with that C{name}).  Sphinx checks its own cross-references, pydoctor
its own; this catches what falls between them (a link from one to the
other, a docstring linking a name pydoctor does not show).  Fragments in
pydoctor's own pages are its layout (inherited members, names defined
twice), not checked.

    python docs/_ext/checklinks.py docs/_build/html

Exit status 1 and one line per broken link when any is broken.
"""

import html.parser
import os
import sys
import urllib.parse


class _Page(html.parser.HTMLParser):
    """
    The links and the anchors of one HTML page.
    """

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links = []
        self.anchors = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("id",) + (("name",) if tag == "a" else ()):
            if attrs.get(name):
                self.anchors.add(attrs[name])
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append(attrs[name])


def _read(path):
    page = _Page()
    with open(path, encoding="utf-8", errors="replace") as f:
        page.feed(f.read())
    return page


def broken_links(root):
    """
    @param root: the built site's directory.
    @return: a sorted list of C{"page: link (why)"} for every broken link.
    """
    pages = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".html"):
                path = os.path.normpath(os.path.join(folder, name))
                pages[path] = _read(path)
    broken = []
    for path, page in pages.items():
        for link in page.links:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue
            target = path
            if parts.path:
                target = os.path.normpath(
                    os.path.join(os.path.dirname(path), urllib.parse.unquote(parts.path))
                )
                if os.path.isdir(target):
                    target = os.path.join(target, "index.html")
            where = os.path.relpath(path, root)
            if not os.path.exists(target):
                broken.append(f"{where}: {link} (no such file)")
                continue
            fragment = urllib.parse.unquote(parts.fragment)
            if fragment and not where.startswith("api" + os.sep) and target in pages \
                    and fragment not in pages[target].anchors:
                broken.append(f"{where}: {link} (no such anchor)")
    return sorted(set(broken))


def main(argv):
    root = argv[1] if len(argv) > 1 else "docs/_build/html"
    broken = broken_links(root)
    for line in broken:
        print(f"broken link: {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
