#!/usr/bin/env python3
"""Which module of host/src imports which, and the import cycles among them.

Usage: scripts/module-graph.py [host/src] [--files] [--edges]

Reads every non-test `.rs` file (test files, `tests/` directories and the trailing
`#[cfg(test)] mod tests` block are skipped: a test may import anything), resolves each `use`
path and each inline `crate::`/`super::` path to the module file defining it, and prints:
- the top-level module graph (`config -> crypto, kafka, ...`) and its cycles;
- with `--files`, every cycle between files (strongly connected components of the file graph,
  ignoring a child's reference to its own ancestors, i.e. `super::` items a parent re-exports,
  which every Rust module tree has).
Comments and doc links are ignored: only code makes an edge.
"""

import os
import re
import sys


def module_of(rel):
    """`proxy/connection/mod.rs` -> ('proxy', 'connection'); `lib.rs` -> ()."""
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def is_test_file(rel):
    name = os.path.basename(rel)
    return name == "tests.rs" or name.endswith("_tests.rs") or "/tests/" in "/" + rel


def strip(text):
    """Code without comments, string literals and the trailing `#[cfg(test)] mod tests` block."""
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    if m:
        text = text[: m.start()]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        i = s.find("{")
        if i < 0:
            for item in split_top(s):
                item = re.sub(r"as\w+$", "", item) if "as" in item else item
                out.append(prefix + item)
            return
        head, body = s[:i], s[i + 1 : s.rfind("}")]
        for item in split_top(body):
            walk(prefix + head, item)

    def split_top(s):
        depth, cur, items = 0, "", []
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            items.append(cur)
        return items

    walk("", tree)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "host", "src")
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".rs"):
                rel = os.path.relpath(os.path.join(dirpath, n), root)
                if rel in ("main.rs",) or rel.startswith("fuzzing/") or is_test_file(rel):
                    continue
                files[module_of(rel)] = rel
    modules = set(files)

    def file_for(path):
        """The file of the longest module prefix of `path` (a tuple of segments)."""
        for k in range(len(path), -1, -1):
            if path[:k] in modules:
                return path[:k]
        return None

    edges = {m: set() for m in modules}
    for mod, rel in files.items():
        code = strip(open(os.path.join(root, rel), encoding="utf-8").read())
        children = {m[-1] for m in modules if len(m) == len(mod) + 1 and m[: len(mod)] == mod}
        paths = []
        for use in re.findall(r"\buse\s+([^;]+);", code):
            paths.extend(expand_use_tree(use))
        paths.extend(re.findall(r"\b((?:crate|super|self)(?:::\w+)+)", code))
        for p in paths:
            segs = [s for s in p.split("::") if s]
            if not segs:
                continue
            if segs[0] == "crate":
                target = tuple(segs[1:])
            elif segs[0] in ("super", "self"):
                base = list(mod)
                while segs and segs[0] in ("super", "self"):
                    if segs[0] == "super":
                        base.pop()
                    segs = segs[1:]
                target = tuple(base + segs)
            elif segs[0] in children:
                target = mod + tuple(segs)
            else:
                continue
            t = file_for(target)
            if t is not None and t != mod:
                edges[mod].add(t)

    name = lambda m: "::".join(m) or "crate"
    top = {}
    for a, bs in edges.items():
        for b in bs:
            if a and b and a[0] != b[0]:
                top.setdefault(a[0], set()).add(b[0])
    print("# top-level modules: who imports whom")
    for a in sorted(top):
        print(f"{a} -> {', '.join(sorted(top[a]))}")
    print()
    print("# cycles between top-level modules")
    report_sccs(top)

    if "--files" in sys.argv:
        # A child naming its own ancestor (`super::X`) is not counted: Rust module trees do that.
        fedges = {
            files[a]: {files[b] for b in bs if not (len(b) < len(a) and a[: len(b)] == b)}
            for a, bs in edges.items()
        }
        print()
        print("# cycles between files (child -> own ancestor edges ignored)")
        report_sccs(fedges, detail=True)
    if "--edges" in sys.argv:
        print()
        print("# file edges")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{files[a]} -> {files[b]}")


def report_sccs(graph, detail=False):
    nodes = set(graph) | {b for bs in graph.values() for b in bs}
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            strong(v)
    if not sccs:
        print("(none)")
    for comp in sorted(sccs):
        print(f"cycle of {len(comp)}: {' <-> '.join(comp)}")
        if detail:
            members = set(comp)
            for a in comp:
                inside = sorted(b for b in graph.get(a, ()) if b in members)
                print(f"    {a} -> {', '.join(inside)}")
    print(f"{len(sccs)} cycle(s)")


if __name__ == "__main__":
    main()
