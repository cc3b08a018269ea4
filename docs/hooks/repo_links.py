"""MkDocs hook: links from the docs to repository files outside ``docs/``.

The pages link to result files as the repository lays them out (``../benchmarks/results/x.json``
from ``docs/npn.md``), so the links work when the Markdown is read on a code host. MkDocs only
knows the files under ``docs/``, so this hook

- adds every repository file such a link points to (a JSON row, a summary, a plot) to the
  site, under its repository path (``benchmarks/results/x.json``), and
- rewrites those links, relative to the page, to where the file now is in the site.

A link to the repository's ``README.md`` becomes a link to the site's home page. A link to a
path that is not a file in the repository is left alone, so ``mkdocs build --strict`` reports it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

# A Markdown link or image target that leaves the docs directory: ](../path) or ](../path#frag)
_LINK = re.compile(r"(\]\()(\.\./[^)\s#]+)(#[^)\s]*)?(\))")


def _repo_root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _target(page_uri: str, link: str) -> str | None:
    """The repository path a link of the page at ``page_uri`` points to, if outside docs/."""
    resolved = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_uri), link))
    if resolved.startswith("docs/") or resolved.startswith(".."):
        return None
    return resolved


def _site_path(repo_path: str) -> str:
    return "index.md" if repo_path == "README.md" else repo_path


def on_files(files, config):
    root = _repo_root(config)
    wanted: set[str] = set()
    for file in files.documentation_pages():
        text = Path(file.abs_src_path).read_text(encoding="utf-8")
        for match in _LINK.finditer(text):
            repo_path = _target(file.src_uri, match.group(2))
            if repo_path and repo_path != "README.md" and (root / repo_path).is_file():
                wanted.add(repo_path)
    for repo_path in sorted(wanted):
        if files.get_file_from_path(repo_path) is None:
            files.append(File(repo_path, src_dir=str(root), dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
    return files


def on_page_markdown(markdown, page, config, files):
    root = _repo_root(config)
    page_dir = posixpath.dirname(page.file.src_uri) or "."

    def rewrite(match: re.Match) -> str:
        repo_path = _target(page.file.src_uri, match.group(2))
        if repo_path is None or not (root / repo_path).is_file():
            return match.group(0)
        new = posixpath.relpath(_site_path(repo_path), page_dir)
        return f"{match.group(1)}{new}{match.group(3) or ''}{match.group(4)}"

    return _LINK.sub(rewrite, markdown)
