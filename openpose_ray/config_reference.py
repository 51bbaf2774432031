"""The configuration reference (docs/configuration.md), made from the config dataclasses themselves.

Every key a job's YAML takes is a field of :class:`~openpose_ray.jobconfig.JobConfig` or of one of
its sections (what ``config_loader`` accepts, nothing else); its type is the field's type hint,
its default the field's default, its meaning the entry for it in its dataclass's docstring
(``name: meaning`` or ``a, b: meaning`` lines, continued on deeper-indented lines). So the
reference cannot drift from the code: tests/test_docs.py checks that the committed page is what
this module writes and that no field lacks its entry.

    python -m openpose_ray.config_reference --write docs/configuration.md
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal

from .jobconfig import JobConfig

_ENTRY = re.compile(r"^(?P<names>[a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (?P<text>.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """{field: meaning} from ``cls``'s docstring (entries at its first indentation level)."""
    docs: dict[str, str] = {}
    current: list[str] = []
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines()[1:]:
        match = _ENTRY.match(line)
        if match:
            current = match["names"].split(", ")
            for name in current:
                docs[name] = match["text"].strip()
        elif line.startswith(" ") and current and line.strip():
            for name in current:
                docs[name] += " " + line.strip()
        else:
            current = []
    return docs


def type_name(hint: Any) -> str:
    """A type hint as the reference writes it: ``int``, ``str | null``, ``fit | stretch``, ``list of float``."""
    origin = typing.get_origin(hint)
    if hint is NoneType:
        return "null"
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return f"list of {len(args)} {type_name(args[0])}" if len(set(args)) == 1 else \
            "list of (" + ", ".join(type_name(a) for a in args) + ")"
    if origin is dict:
        key, value = typing.get_args(hint)
        return f"map of {type_name(key)} to {type_name(value)}"
    return getattr(hint, "__name__", str(hint))


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(map(str, value)) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def sections(cls: type = JobConfig, prefix: str = "") -> list[tuple[str, type, list[tuple[str, str, str, str]]]]:
    """[(section key, dataclass, [(dotted key, type, default, meaning)])], the top level first."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows, nested = [], []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            nested += sections(hint, f"{prefix}{field.name}.")
            continue
        if field.name not in docs:
            raise ValueError(f"{cls.__name__}.{field.name} has no entry in {cls.__name__}'s docstring")
        rows.append((prefix + field.name, type_name(hint), _default(field), docs[field.name]))
    return [(prefix.rstrip("."), cls, rows)] + nested


def reference_markdown() -> str:
    """The whole page."""
    out = ["# Configuration reference", "",
           "Every key of a job's YAML (`openpose-ray run --config FILE`, `jobs/annotate.py`) and of `--set "
           "key=value`, with its type, default and meaning. Written by `python -m openpose_ray.config_reference "
           "--write docs/configuration.md` from the configuration's dataclasses (`openpose_ray/jobconfig.py`, "
           "`openpose_ray/config.py`): what is here is what the loader accepts. An unknown key is refused with "
           "the closest valid name; `configs/*.yaml` are complete, commented examples.", ""]
    for key, cls, rows in sections():
        title = f"`{key}`" if key else "Top level"
        summary = inspect.cleandoc(cls.__doc__ or "").splitlines()[0]
        out += [f"## {title}", "", summary, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{k}` | {t.replace('|', '&#124;')} | {d} | {m.replace('|', '&#124;')} |" for k, t, d, m in rows]
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="write the page here (default: print it)")
    args = parser.parse_args()
    if args.write:
        args.write.write_text(reference_markdown())
    else:
        print(reference_markdown(), end="")


if __name__ == "__main__":
    main()
