#!/usr/bin/env python3
"""Offline check of infra/terraform without a terraform binary (pip install python-hcl2).

Parses every .tf file and checks that every variable has a description and a type, every
output a description, every variable is used, and every var.X, local.X, TYPE.NAME and data.TYPE.NAME reference names
something declared here. Exit status 1 on any finding."""
import pathlib
import re
import sys

import hcl2

HERE = pathlib.Path(__file__).resolve().parent
PROVIDER_PREFIXES = ("azurerm_", "azapi_", "random_")


def unquote(key):
    return key.strip('"')


def main():
    problems = []
    declared = {"var": set(), "local": set(), "resource": set(), "data": set()}
    texts = {}
    for path in sorted(HERE.glob("*.tf")):
        with path.open() as f:
            doc = hcl2.load(f)
        # References are found in the text without comments (hcl2 keeps expressions as text).
        texts[path.name] = re.sub(r"(?m)^\s*#.*$|\s#.*$", "", path.read_text())
        for block in doc.get("variable", []):
            for name, body in block.items():
                declared["var"].add(unquote(name))
                for key in ("description", "type"):
                    if key not in body:
                        problems.append(f"{path.name}: variable {unquote(name)} has no {key}")
        for block in doc.get("output", []):
            for name, body in block.items():
                if "description" not in body:
                    problems.append(f"{path.name}: output {unquote(name)} has no description")
        for block in doc.get("locals", []):
            declared["local"].update(k for k in block if not k.startswith("__"))
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for name in named:
                        declared[kind].add(f"{unquote(rtype)}.{unquote(name)}")
    counts = {}
    for file, text in texts.items():
        refs = [("var", m) for m in re.findall(r"\bvar\.(\w+)", text)]
        refs += [("local", m) for m in re.findall(r"\blocal\.(\w+)", text)]
        refs += [("data", f"{t}.{n}") for t, n in re.findall(r"\bdata\.(\w+)\.(\w+)", text)]
        refs += [
            ("resource", f"{t}.{n}")
            for t, n in re.findall(r"(?<![\w.\"])((?:%s)\w+)\.(\w+)" % "|".join(PROVIDER_PREFIXES), text)
        ]
        for kind, ref in refs:
            counts[kind] = counts.get(kind, 0) + 1
            if ref not in declared[kind]:
                problems.append(f"{file}: {kind} reference {ref} is not declared")
    used_vars = {m for text in texts.values() for m in re.findall(r"\bvar\.(\w+)", text)}
    for name in sorted(declared["var"] - used_vars):
        problems.append(f"variable {name} is declared but never used")
    summary = ", ".join(f"{len(v)} {k}" for k, v in declared.items())
    print(f"{len(texts)} files; declared: {summary}")
    print("references checked: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for problem in problems:
        print("PROBLEM:", problem)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
