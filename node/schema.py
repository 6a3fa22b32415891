"""The machinery behind the one configuration schema (the declarations are in ``node.config``).

Every setting is one pydantic field of one section, declared once with its type, default, bounds,
choices and help text. From that declaration come: TOML files (one table per section), the
Python API (``SimConfig.of(nodes=8)`` or nested sections), and every command line
(:func:`build_parser`). Validation runs wherever a config is built and ends in a one-line
:class:`ConfigError` that names the section and the key; an unknown key or section suggests the
closest valid one.

Why pydantic v2: strict typed fields with bounds and per-field metadata replace the hand-written
type checks (which matched type names as text), and its errors carry the location of the bad
value, which is what a one-line error naming ``[section] key`` needs.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, core_schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOOLS = ("peer", "sim", "launch")
TOOL_NAMES = {"peer": "python -m node", "sim": "python -m sim", "launch": "scripts/launch.py"}


class ConfigError(ValueError):
    """A bad setting in a config file, a flag or the Python API; the message names the key."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or ''."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class OneOf:
    """Field metadata: the value must be one of ``names()`` (read at validation time, so a
    registry that grows later is honoured). The CLI lists the same names in ``--help``."""

    names: Callable[[], Sequence[str]]

    def valid(self) -> list[str]:
        return list(self.names())

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        def check(value: Any) -> Any:
            valid = self.valid()
            if value is not None and value not in valid:
                shown = repr(value) if len(repr(value)) <= 40 else "the value given"
                raise PydanticCustomError(
                    "one_of", "unknown {shown}; valid: {valid}{hint}",
                    {"shown": shown, "valid": ", ".join(valid),
                     "hint": suggest(str(value), valid)})
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))


def setting(default: Any, help: str, *, flag: str | None = None,
            tools: Sequence[str] = TOOLS, path: bool = False, metavar: str | None = None,
            **constraints: Any) -> Any:
    """One setting: its default, its help text (shown once in ``--help``), its flag (default
    ``--key-with-dashes``; tables have none), the tools it applies to, whether it is a file
    path (relative paths in a config file are relative to the file), and pydantic bounds."""
    if isinstance(default, dict):
        return Field(default_factory=dict, description=help,
                     json_schema_extra={"flag": None, "tools": list(tools), "path": path})
    return Field(default, description=help, **constraints,
                 json_schema_extra={"flag": flag, "tools": list(tools), "path": path,
                                    "metavar": metavar})


def is_table(info: FieldInfo) -> bool:
    """A setting that is a TOML table (``[model.options]``): set in files or Python only."""
    return typing.get_origin(info.annotation) is dict or info.annotation is dict


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def field_tools(info: FieldInfo) -> list[str]:
    return list(_extra(info).get("tools", TOOLS))


def field_flag(key: str, info: FieldInfo) -> str:
    return _extra(info).get("flag") or "--" + key.replace("_", "-")


def choices_of(info: FieldInfo) -> list[str] | None:
    for meta in info.metadata:
        if isinstance(meta, OneOf):
            return meta.valid()
    return None


def base_type(info: FieldInfo) -> type:
    """int, float, str or bool for ``int | None`` and the like."""
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return cast(type, annotation)


class Section(BaseModel):
    """One TOML table. Unknown keys are errors; ints are accepted for floats, nothing else is
    converted (a TOML string is never silently read as a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


_MESSAGES = {
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
}


def describe(error: Mapping[str, Any]) -> str:
    """A short reason for one pydantic error, with the offending value only when it is short."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _MESSAGES:
        reason = _MESSAGES[kind].format(**ctx)
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        reason = "must be " + kind.split("_")[0].replace("dict", "a table").replace(
            "model", "a table").replace("bool", "true or false")
    else:
        reason = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind not in ("one_of", "value_error") and isinstance(value, (int, float, str, bool)) \
            and len(repr(value)) <= 40:
        reason += f", got {value!r}"
    return reason


def where(loc: Sequence[Any]) -> str:
    """``[section] key`` for a pydantic location (a top-level field is just its name)."""
    parts = [str(p) for p in loc]
    if not parts:
        return ""
    if len(parts) == 1:
        return f"[{parts[0]}]"
    return f"[{parts[0]}] " + ".".join(parts[1:])


def config_error(exc: ValidationError, prefix: str = "") -> ConfigError:
    """The first problem of a ValidationError as one line naming the section and the key."""
    error = exc.errors()[0]
    loc = error["loc"]
    place = where(loc)
    if error["type"] == "extra_forbidden":
        return ConfigError(f"{prefix}unknown key {place}")
    reason = describe(error)
    if not place:
        return ConfigError(prefix + reason)
    # a section's own check names its key in the message: "[data] shard must be ..."
    joiner = " " if error["type"] == "value_error" and len(loc) == 1 else ": "
    return ConfigError(prefix + place + joiner + reason)


ConfigT = TypeVar("ConfigT", bound="Config")


class Config(BaseModel):
    """A whole configuration for one tool: sections by name (plus tables such as
    [neighbours]). Subclasses set ``TOOL``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    TOOL: ClassVar[str] = ""

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def sections(cls) -> dict[str, type[Section]]:
        out: dict[str, type[Section]] = {}
        for name, info in cls.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, Section):
                out[name] = annotation
        return out

    @classmethod
    def from_table(cls: type[ConfigT], table: dict[str, Any], source: str = "") -> ConfigT:
        """Validate a TOML-shaped table. Sections that belong only to other tools are ignored
        (one file can hold a simulator and a peer config); anything else unknown is an error
        that suggests the closest valid name."""
        prefix = f"{source}: " if source else ""
        ours = set(cls.model_fields)
        known_elsewhere = set(ALL_SECTIONS) - ours
        kept = {}
        for name, value in table.items():
            if name in ours:
                kept[name] = value
            elif name in known_elsewhere:
                continue
            elif not isinstance(value, dict):
                raise ConfigError(prefix + _top_level_hint(cls, name))
            else:
                raise ConfigError(f"{prefix}unknown section [{name}]{suggest(name, ours)}; "
                                  f"valid: {', '.join(f'[{s}]' for s in cls.model_fields)}")
        for name, value in kept.items():
            section = cls.sections().get(name)
            if section is not None and isinstance(value, dict):
                for key in value:
                    if key not in section.model_fields:
                        raise ConfigError(
                            f"{prefix}unknown key [{name}] {key}"
                            f"{suggest(key, section.model_fields)}; valid: "
                            f"{', '.join(section.model_fields)}")
        try:
            return cls.model_validate(kept)
        except ValidationError as exc:
            raise config_error(exc, prefix) from None

    @classmethod
    def load(cls: type[ConfigT], path: str | Path,
             overrides: dict[str, Any] | None = None) -> ConfigT:
        """A config from a TOML file, with ``overrides`` (a nested table) applied on top."""
        table = read_config_file(path)
        return cls.from_table(merge_tables(table, overrides or {}), str(path))

    @classmethod
    def flat_keys(cls) -> dict[str, tuple[str, str]]:
        """Flat name (the flag without dashes: ``nodes``, ``model``, ``attack_scale``) ->
        (section, key), for the settings that apply to this tool."""
        out = {}
        for section_name, section in cls.sections().items():
            for key, info in section.model_fields.items():
                if cls.TOOL in field_tools(info):
                    # tables have no flag; their flat name says whose they are: model_options
                    name = f"{section_name}_{key}" if is_table(info) else \
                        field_flag(key, info)[2:].replace("-", "_")
                    assert name not in out, f"flat name {name} declared twice"
                    out[name] = (section_name, key)
        return out

    @classmethod
    def of(cls: type[ConfigT], **settings: Any) -> ConfigT:
        """Build from flat names (those of the command line): ``SimConfig.of(nodes=8,
        topology="ring", model="logreg")``. Validated like a file."""
        return cls.from_table(cls._nest(settings))

    def updated(self: ConfigT, **settings: Any) -> ConfigT:
        """A validated copy with some flat-named settings changed (``config.updated(seed=2)``)."""
        return type(self).from_table(merge_tables(self.explicit(), self._nest(settings)))

    @classmethod
    def _nest(cls, settings: dict[str, Any]) -> dict[str, Any]:
        keys = cls.flat_keys()
        nested: dict[str, Any] = {}
        for name, value in settings.items():
            if name in cls.model_fields and not isinstance(cls.model_fields[name].annotation,
                                                           type):
                nested[name] = value  # a plain table such as neighbours
                continue
            if name not in keys:
                users = [t for t, c in CONFIGS.items() if name in c.flat_keys()]
                if users:
                    raise ConfigError(f"setting {name!r} does not apply to "
                                      f"{TOOL_NAMES[cls.TOOL]} (only to "
                                      f"{' and '.join(TOOL_NAMES[t] for t in users)})")
                raise ConfigError(f"unknown setting {name!r}{suggest(name, keys)}")
            section, key = keys[name]
            nested.setdefault(section, {})[key] = value
        return nested

    def explicit(self) -> dict[str, Any]:
        """Only the settings that were given (not the defaults), as a nested table."""
        out: dict[str, Any] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            out[name] = value.model_dump(exclude_unset=True) if isinstance(value, Section) \
                else value
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every setting, nested by section (what summary.json records as ``config``)."""
        return self.model_dump(mode="json")

    @model_validator(mode="before")
    @classmethod
    def _applies_to_tool(cls, raw: Any) -> Any:
        """Refuse, with the reason, settings that do not apply to this tool (checked before
        anything else, so the refusal is the first thing a user reads)."""
        if not isinstance(raw, dict):
            return raw
        for section_name, section in cls.sections().items():
            given = raw.get(section_name)
            if isinstance(given, Section):
                given = given.model_dump(exclude_unset=True)
            if not isinstance(given, dict):
                continue
            for key in given:
                info = section.model_fields.get(key)
                if info is not None and cls.TOOL not in field_tools(info):
                    users = " and ".join(TOOL_NAMES[t] for t in field_tools(info))
                    raise ValueError(f"[{section_name}] {key} does not apply to "
                                     f"{TOOL_NAMES[cls.TOOL]} (only to {users})")
        return raw


def _top_level_hint(cls: type[Config], key: str) -> str:
    """A key outside any section: name the section it belongs in, if it exists."""
    homes = [f"[{s}] {key}" for s, sec in cls.sections().items() if key in sec.model_fields]
    homes += [f"[{s}] name" for s in cls.sections() if s == key]
    if homes:
        return f"key {key!r} must be inside its section: {homes[0]}"
    return f"unknown top-level key {key!r}; every setting lives in a section " \
           f"({', '.join(f'[{s}]' for s in cls.model_fields)})"


# filled by node.config: every top-level table of any tool, with its Section class (or the
# annotation of a plain table such as [neighbours])
ALL_SECTIONS: dict[str, Any] = {}
CONFIGS: dict[str, type[Config]] = {}  # filled by node.config: tool -> its Config class


def merge_tables(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, one level deep for sections."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's table, with its relative file paths made relative to the file's folder
    and that folder put first on ``[run] import_path`` (so a model.py next to the file can be
    named as ``model:build``)."""
    table = read_toml(path)
    base = Path(path).resolve().parent
    for name, section in table.items():
        cls = ALL_SECTIONS.get(name)
        if not (isinstance(cls, type) and issubclass(cls, Section)) or \
                not isinstance(section, dict):
            continue
        for key, value in section.items():
            info = cls.model_fields.get(key)
            # an empty path means "not set" (dump_toml writes it so), never "this folder"
            if info is not None and _extra(info).get("path") and isinstance(value, str) \
                    and value and not Path(value).is_absolute():
                section[key] = str(base / value)
    run = table.setdefault("run", {})
    if isinstance(run, dict):
        given = run.get("import_path", [])
        run["import_path"] = [str(base)] + [g for g in given if g != str(base)] \
            if isinstance(given, list) else given
    return table


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table of a TOML file; a missing or malformed file is a ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--config: {path} is a folder, not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def dump_toml(config: Config) -> str:
    """TOML text that ``type(config).load`` reads back into an equal config (None values are
    left out: they mean 'the default'; settings of other tools are left out too)."""
    lines: list[str] = []
    for name in type(config).model_fields:
        value = getattr(config, name)
        if not isinstance(value, Section):  # a plain table such as [neighbours]
            lines.append(f"[{name}]")
            lines += [f'"{k}" = {toml_value(v)}' for k, v in value.items()]
            lines.append("")
            continue
        tables = []
        lines.append(f"[{name}]")
        for key, info in type(value).model_fields.items():
            item = getattr(value, key)
            if item is None or config.TOOL not in field_tools(info):
                continue
            if isinstance(item, dict):
                tables.append((key, item))
            else:
                lines.append(f"{key} = {toml_value(item)}")
        for key, table in tables:
            lines.append(f"\n[{name}.{key}]")
            lines += [f'"{k}" = {toml_value(v)}' for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


# -- command lines ----------------------------------------------------------------------------

def _help(info: FieldInfo, default: Any) -> str:
    text = info.description or ""
    choices = choices_of(info)
    if choices:
        text += f"; one of: {', '.join(choices)}"
    if isinstance(default, bool) or "default" in text:
        return text
    shown = "none" if default is None else default
    return f"{text} (default: {shown})"


def add_settings(parser: argparse.ArgumentParser, cls: type[Config]) -> dict[str, tuple[str, str]]:
    """One flag per setting of ``cls`` that applies to its tool, grouped by section; returns
    dest -> (section, key). Flags are absent from the namespace unless given, so a file's value
    is only overridden by a flag the user typed."""
    dests = {}
    for section_name, section in cls.sections().items():
        doc = " ".join((section.__doc__ or "").replace("``", "").split())
        group = parser.add_argument_group(f"[{section_name}]", doc)
        for key, info in section.model_fields.items():
            if cls.TOOL not in field_tools(info) or is_table(info) or \
                    typing.get_origin(info.annotation) is list:
                continue
            flag = field_flag(key, info)
            dest = flag[2:].replace("-", "_")
            kind = base_type(info)
            if kind is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS,
                                   help=_help(info, info.default) +
                                   f" (default: {'on' if info.default else 'off'})")
            else:
                metavar = _extra(info).get("metavar") or {int: "N", float: "X"}.get(
                    kind, "NAME" if choices_of(info) else "TEXT")
                group.add_argument(flag, dest=dest, type=kind if kind in (int, float) else str,
                                   default=argparse.SUPPRESS, metavar=metavar,
                                   help=_help(info, info.default))
            dests[dest] = (section_name, key)
    return dests


def nest_flags(values: dict[str, Any], dests: dict[str, tuple[str, str]]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dest, value in values.items():
        if dest in dests:
            section, key = dests[dest]
            nested.setdefault(section, {})[key] = value
    return nested


class SettingsParser(argparse.ArgumentParser):
    """An argument parser that takes no abbreviations and names the closest flag for an unknown
    one (``--node 4`` is an error that suggests ``--nodes``, never silently taken for it)."""

    def __init__(self, prog: str, description: str, epilog: str = ""):
        description = textwrap.fill(" ".join(description.split()), width=90)
        super().__init__(prog=prog, description=description, epilog=epilog,
                         allow_abbrev=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str) -> NoReturn:
        """One line, no usage block (which lists every setting and would bury the reason)."""
        self.exit(2, f"{self.prog}: error: {message} (--help lists every setting)\n")

    def parse_args(self, args=None, namespace=None):
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            first = next((u for u in unknown if u.startswith("-")), unknown[0])
            name = first.split("=", 1)[0]
            close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.error(f"unrecognized argument {name}{hint}")
        return namespace


def config_from_command_line(cls: type[ConfigT], parser: SettingsParser, *,
                             dests: dict[str, tuple[str, str]], args: dict[str, Any],
                             table: dict[str, Any], source: str = "",
                             extra: dict[str, Any] | None = None) -> ConfigT:
    """Defaults < the file's ``table`` < ``extra`` (tables built from special flags) < flags;
    a bad setting ends the program through ``parser.error`` with the one-line message."""
    merged = merge_tables(merge_tables(table, extra or {}), nest_flags(args, dests))
    try:
        return cls.from_table(merged, source)
    except ConfigError as exc:
        message = str(exc)
        for dest, (section, key) in dests.items():  # a bad flag is named as the user typed it
            if dest in args and f"[{section}] {key}" in message:
                flag = "--" + dest.replace("_", "-")
                message = f"{flag}: {message}"
                break
        parser.error(message)
        raise  # pragma: no cover - parser.error exits
