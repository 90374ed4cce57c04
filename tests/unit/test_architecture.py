"""gateway/'s layout holds: no module imports itself round a circle, and the playbook copies
every module of every layer (its source globs name each layer's folder)."""

from __future__ import annotations

import fnmatch
import posixpath

import grimp
import yaml

from tests.harness import REPO


def test_no_module_of_the_gateway_imports_itself_round_a_circle():
    graph = grimp.build_graph("gateway", cache_dir=None)
    circles = sorted({tuple(sorted((module, imported)))
                      for module in graph.modules
                      for imported in graph.find_modules_directly_imported_by(module)
                      if graph.chain_exists(importer=imported, imported=module)})
    assert circles == []


def test_the_playbook_copies_every_module_of_the_gateway():
    defaults = yaml.safe_load((REPO / "ansible/roles/localai_python/defaults/main.yml").read_text())
    globs = defaults["localai_python_source_files"]
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "gateway").rglob("*") if p.suffix in (".py", ".typed"))
    # Ansible's fileglob globs the file name only: a glob's folder must be the module's, as written.
    uncopied = [m for m in modules
                if not any(posixpath.dirname(m) == posixpath.dirname(g)
                           and fnmatch.fnmatch(posixpath.basename(m), posixpath.basename(g)) for g in globs)]
    assert uncopied == []
