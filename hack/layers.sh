#!/usr/bin/env bash
# Checks that the modules of src/ import each other one way only, down the layers of
# ARCHITECTURE.md:
#
#   main → app → config → {admission, restore, resync, certs, server, cli} → store → policy
#        → {telemetry, patch, limits} → {error, text, duration}
#
# Every `crate::<module>` path (in `use` lines and inline), every `super::` path that leaves
# its module, and every `restatus::<module>` path in main.rs counts as an import. An import
# is allowed only into a strictly lower layer, so modules of one layer never import each
# other and no cycle can form. Items of the crate root (lib.rs) are above every layer: the
# root only declares modules. Exits 1 and names each offending line otherwise.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

exec python3 - "$repo/src" <<'PY'
import os
import re
import sys

# Lower number = lower layer. A module not listed here fails the check until it is placed.
LAYERS = {
    "error": 0,
    "duration": 0,
    "text": 0,
    "telemetry": 1,
    "patch": 1,
    "limits": 1,
    "policy": 2,
    "store": 3,
    "admission": 4,
    "restore": 4,
    "resync": 4,
    "certs": 4,
    "server": 4,
    "cli": 4,
    "config": 5,
    "app": 6,
    "main": 7,
}
ROOT = "the crate root (lib.rs)"

src = sys.argv[1]


def strip_comments(text):
    # Line comments (including doc comments) and block comments; string literals that
    # contain "//" are rare enough in this crate to be acceptable false negatives.
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def module_of(path):
    rel = os.path.relpath(path, src)
    parts = rel[:-3].split(os.sep)  # drop ".rs"
    if parts == ["lib"]:
        return None, 0
    if parts == ["main"]:
        return "main", 0
    # src/x.rs and src/x/mod.rs sit at depth 0 below the root; src/x/y.rs at depth 1.
    depth = len(parts) - 1 - (1 if parts[-1] == "mod" else 0)
    return parts[0], depth


def group_items(text, start):
    """Top-level items of the brace group opening at text[start] == '{'."""
    depth, item, items = 0, "", []
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and ch == ",":
            items.append(item)
            item = ""
        else:
            item += ch
    items.append(item)
    return [i.strip() for i in items if i.strip()]


def inline_mod_depth(text):
    """For each offset, how many inline `mod x { ... }` blocks enclose it (a function)."""
    stack, marks = [], [(0, 0)]
    for m in re.finditer(r"[{}]", text):
        if m.group(0) == "{":
            stack.append(bool(re.search(r"\bmod\s+[A-Za-z_][A-Za-z0-9_]*\s*$", text[:m.start()])))
        elif stack:
            stack.pop()
        marks.append((m.end(), sum(stack)))

    def at(offset):
        depth = 0
        for pos, d in marks:
            if pos > offset:
                break
            depth = d
        return depth

    return at


def first_ident(path_text):
    m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", path_text)
    return m.group(1) if m else None


def targets(text, prefix):
    """(offset, first path segment) for every path starting with `prefix`."""
    for m in re.finditer(r"(?<![A-Za-z0-9_:])" + re.escape(prefix), text):
        rest = m.end()
        if text[rest:rest + 1] == "{":
            for item in group_items(text, rest):
                ident = first_ident(item)
                if ident and ident != "self":
                    yield m.start(), ident
        else:
            ident = first_ident(text[rest:])
            if ident:
                yield m.start(), ident


failures = []
edges = set()
for dirpath, _, files in os.walk(src):
    for name in sorted(files):
        if not name.endswith(".rs"):
            continue
        path = os.path.join(dirpath, name)
        module, depth = module_of(path)
        if module is None:
            continue
        if module not in LAYERS:
            failures.append(f"{os.path.relpath(path)}: module `{module}` has no layer in hack/layers.sh")
            continue
        with open(path, encoding="utf-8") as f:
            text = strip_comments(f.read())
        found = list(targets(text, "crate::"))
        if module == "main":
            found += list(targets(text, "restatus::"))
        # `super::` chains deep enough to reach the crate root, inline modules counted.
        nesting = inline_mod_depth(text)
        for n in range(1, 8):
            for offset, ident in targets(text, "super::" * n):
                if n == depth + nesting(offset) + 1:
                    found.append((offset, ident))
        for offset, ident in found:
            if ident == "super":
                continue
            target = ident if ident in LAYERS else ROOT
            if target == module:
                continue
            line = text.count("\n", 0, offset) + 1
            where = f"{os.path.relpath(path)}:{line}"
            if target == ROOT:
                failures.append(f"{where}: `{module}` uses `{ident}` from {ROOT}; move it into a leaf module")
                continue
            edges.add((module, target))
            if LAYERS[target] >= LAYERS[module]:
                kind = "its own layer" if LAYERS[target] == LAYERS[module] else "a higher layer"
                failures.append(
                    f"{where}: `{module}` (layer {LAYERS[module]}) imports `{target}` "
                    f"(layer {LAYERS[target]}), {kind}"
                )

if failures:
    print("hack/layers.sh: imports that point up or sideways (see ARCHITECTURE.md):", file=sys.stderr)
    for f in sorted(set(failures)):
        print("  " + f, file=sys.stderr)
    sys.exit(1)
print(f"hack/layers.sh: {len(edges)} module imports, all pointing down the layers")
PY
