#!/usr/bin/env python3
"""Reference renderer for tests/test_chat_template.c.

Renders chat templates with jinja2 configured exactly as Hugging Face
transformers' apply_chat_template does (ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, json.dumps-based tojson,
raise_exception and strftime_now globals).

usage: chat_template_ref.py CASES.json OUT.json
CASES.json: [{"template": str, "vars": {...}}, ...]
OUT.json:   [{"ok": true, "text": str} | {"ok": false, "kind": "raise"|"error", "error": str}, ...]
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class RaisedByTemplate(Exception):
    pass


def raise_exception(message):
    raise RaisedByTemplate(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    cases = json.load(open(sys.argv[1], encoding="utf-8"))
    env = make_env()
    out = []
    for case in cases:
        try:
            text = env.from_string(case["template"]).render(**case.get("vars", {}))
            out.append({"ok": True, "text": text})
        except RaisedByTemplate as e:
            out.append({"ok": False, "kind": "raise", "error": str(e)})
        except (jinja2.TemplateError, TypeError, ValueError, KeyError,
                AttributeError, IndexError, ZeroDivisionError) as e:
            out.append({"ok": False, "kind": "error", "error": f"{type(e).__name__}: {e}"})
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
