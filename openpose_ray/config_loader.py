"""YAML job configuration -> :class:`~openpose_ray.jobconfig.JobConfig`, strictly.

The dataclass fields of ``jobconfig`` and their type hints are the only schema
(no second list of keys to keep in step); ``configs/*.yaml`` documents every key.
Each mistake is a :class:`ConfigError` naming the dotted key:

- an unknown key, at any level or in ``--set``, is refused with the closest valid name;
- a value must have its field's type as YAML parsed it: an int is accepted where a
  float is expected, but a bool must be ``true``/``false`` (never the string "yes"),
  a Literal one of its values; lists become tuples, and a ``tuple[str, ...]``
  (``input``, the extension lists) also takes a single string;
- an empty section (every key commented out) keeps its defaults; a key given twice is refused.

Paths are kept as written (relative ones are relative to the working directory,
not to the YAML file). Overrides ``dotted.key=value`` (the CLI's ``--set``) are
applied before validation, the value parsed as YAML (``8``, ``[656,368]``,
``null``, ``s3://b/p``), never evaluated as Python.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
import urllib.parse
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal

import yaml

from .config import resolve_precision
from .jobconfig import JobConfig, resolve_decoder
from .storage import redact

__all__ = ["ConfigError", "load_config", "config_to_dict", "redacted_dict", "config_fingerprint", "dotted_keys"]


class ConfigError(ValueError):
    """The job configuration is invalid; the message names the key and what to do."""


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> JobConfig:
    """Read the YAML file ``path`` (None: start from the defaults), apply ``overrides``, validate.

    ``overrides``: strings ``"dotted.key=value"``, applied in order, e.g.
    ``("inference.batch_size=8", "model.net_size=[656,368]", "input=/data/x")``.
    ``input`` and ``output`` have no default and must be set by one or the other.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
        raw = _parse_yaml(text, f"config file {str(path)!r}")
        raw = {} if raw is None else raw  # an empty file
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must be a mapping of keys to values, not {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    config = _build(JobConfig, raw, "")
    if not config.input or not all(config.input) or not config.output:
        raise ConfigError(f"input and output must be non-empty, got {list(config.input)} and {config.output!r}")
    return config


def dotted_keys(cls: type = JobConfig) -> tuple[str, ...]:
    """Every settable (leaf) key of ``cls`` as a dotted path, in declaration order."""
    keys: list[str] = []
    for name, hint in _fields(cls).items():
        if dataclasses.is_dataclass(hint):
            keys.extend(f"{name}.{sub}" for sub in dotted_keys(hint))
        else:
            keys.append(name)
    return tuple(keys)


def config_to_dict(config: Any) -> dict[str, Any]:
    """``config`` as plain YAML/JSON-able values (tuples become lists); load_config reads it back."""
    return _plain(dataclasses.asdict(config))


def redacted_dict(config: JobConfig) -> dict[str, Any]:
    """:func:`config_to_dict` for logs and summaries, with anything secret-looking masked.

    The config holds no credentials by design, but a user may still paste a
    signed URL or ``user:password@host`` into a path or endpoint: every string
    goes through :func:`openpose_ray.storage.redact`, and a URL's query string
    and password are replaced by ``<redacted>``.
    """
    return _plain(config_to_dict(config), _redact_string)


def config_fingerprint(config: JobConfig, device: str = "cpu") -> str:
    """16 hex digits of the sha256 of the settings that change the people found.

    Included: ``model`` (name, weights, weights_sha256, the resolved input
    geometry: net_size and resize_mode as ``preprocess.resolve_input_spec``
    makes them, so an unchanged config whose default changed is a new
    generation; a stretch geometry is written without its mode, as before fit
    existed, so stretch runs keep their fingerprints; scales), all
    of ``postprocess``, ``inference.precision`` (half precision moves
    keypoints; "auto" as it resolves on ``device``, the actors' "cpu" or "cuda"),
    ``sources.max_image_pixels`` (which images get an error
    row instead of people) and ``sources.frame_step`` / ``target_fps`` (which
    frames have rows; absent when every frame is annotated) and ``sources.decoder`` as it
    resolves on ``device`` (yuv and gpu convert pixels on the device, rounding differently from
    swscale, into the same pixels: one value; absent for cpu). Excluded, as they change where or how fast
    results come, not what they are: input, output, the rest of sources
    (listing, sharding), the rest of inference (device, batch size and where
    peaks are found move floats in the last bits only), write, s3, ray. Canonical sorted JSON, so key order
    never matters. Null ``model.weights`` means the registry's default weights,
    identified by the model name.
    """
    from .models.registry import get_entry
    from .preprocess import resolve_input_spec

    model = dataclasses.asdict(config.model)
    spec = resolve_input_spec(get_entry(config.model.name).input_spec, config.model.net_size, config.model.resize_mode)
    model["net_size"], model["resize_mode"] = list(spec.net_size), spec.resize_mode
    if spec.resize_mode == "stretch":  # the only mode before fit existed; aspect_buckets only acts on fit
        del model["resize_mode"], model["aspect_buckets"]
    settings = {
        "model": model,
        "postprocess": dataclasses.asdict(config.postprocess),
        "sources.max_image_pixels": config.sources.max_image_pixels,
    }
    precision = resolve_precision(config.inference.precision, device)
    if precision != "fp32":  # absent at fp32, so fingerprints of earlier runs stay valid
        settings["inference.precision"] = precision
    if resolve_decoder(config.sources.decoder, device) != "cpu":  # likewise: absent for swscale's pixels; yuv and
        settings["sources.decoder"] = "yuv"  # gpu make the same planes (NVDEC decodes exactly), converted alike
    if config.sources.frame_step != 1 or config.sources.target_fps is not None:  # likewise: absent unsampled
        settings["sources.sampling"] = [config.sources.frame_step, config.sources.target_fps]
    canonical = json.dumps(_plain(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {exc}") from None


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected dotted.key=value, e.g. --set inference.batch_size=8")
    cls: Any = JobConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"--set {override!r}: {prefix!r} is a value, not a section")
        fields = _fields(cls)
        if part not in fields:
            raise ConfigError(f"--set {override!r}: {_unknown_key(prefix, part, fields)}")
        cls = fields[part]
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}  # a missing or empty section; a scalar there is replaced
        node = node[part]
    node[parts[-1]] = _parse_yaml(text, f"--set {override!r}: the value")


def _unknown_key(prefix: str, name: str, fields: Mapping[str, Any]) -> str:
    """'unknown key ...' with the closest sibling, else the closest key anywhere."""
    close = difflib.get_close_matches(str(name), list(fields), n=1)
    if close:
        guess = _join(prefix, close[0])
    else:  # e.g. batch_size written at the top level
        every = {key.rsplit(".", 1)[-1]: key for key in reversed(dotted_keys())}
        close = difflib.get_close_matches(str(name), list(every), n=1, cutoff=0.8)
        guess = every[close[0]] if close else None
    hint = f"; did you mean {guess!r}?" if guess else f"; valid keys here: {', '.join(fields)}"
    return f"unknown key {_join(prefix, name)!r}{hint}"


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _fields(cls: type) -> dict[str, Any]:
    """{field name: resolved type hint} of a dataclass (hints are strings under PEP 563)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls: type, raw: Any, prefix: str) -> Any:
    section = prefix or "the config"
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping of keys to values, got {raw!r}")
    fields = _fields(cls)
    required = [f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING]
    for name in raw:
        if name not in fields:
            raise ConfigError(_unknown_key(prefix, name, fields))
    given = {name: value for name, value in raw.items() if value is not None or name not in required}
    values = {name: _coerce(fields[name], value, _join(prefix, name)) for name, value in given.items()}
    for name in required:
        if name not in values:  # every required field is a path today (input, output)
            raise ConfigError(f"{_join(prefix, name)} is required: set it in the YAML or pass --set {_join(prefix, name)}=PATH")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"{section}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """``value`` as type ``hint``, or ConfigError naming ``key``, the expected type and the value."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, UnionType):
        if value is None and NoneType in args:
            return None
        for arm in (a for a in args if a is not NoneType):
            try:
                return _coerce(arm, value, key)
            except ConfigError:
                pass
    elif origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
    elif origin is dict:
        if isinstance(value, dict):
            return {_coerce(args[0], k, f"{key}.{k}"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    elif origin is tuple:
        if isinstance(value, str) and len(args) == 2 and args[1] is Ellipsis and args[0] is str:
            value = [value]
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(args[0], item, key) for item in value)
            if len(value) == len(args):
                return tuple(_coerce(arm, item, key) for arm, item in zip(args, value))
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint in (int, str, bool):
        if type(value) is hint:
            return value
    else:  # a field type this loader does not know yet: fail loudly, not silently
        raise ConfigError(f"{key}: unsupported field type {hint!r} in the config schema")
    raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, UnionType):
        return " or ".join("null" if a is NoneType else _describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is dict:
        return f"mapping of {_describe(args[0])} to {_describe(args[1])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_describe(args[0])}"
        return f"list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    return {bool: "bool (true or false)", int: "int", float: "float", str: "string"}.get(hint, repr(hint))


def _plain(value: Any, on_string=None) -> Any:
    """Dicts, lists and scalars only (tuples become lists); ``on_string`` maps every string."""
    if isinstance(value, dict):
        return {key: _plain(item, on_string) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, on_string) for item in value]
    return on_string(value) if on_string and isinstance(value, str) else value


def _redact_string(text: str) -> str:
    text = redact(text)
    try:
        url = urllib.parse.urlsplit(text)
        password = url.password
    except ValueError:  # not a URL (e.g. an invalid port): nothing more to mask
        return text
    if url.scheme and len(url.scheme) > 1 and (url.query or password):
        netloc = url.netloc.replace(f":{password}@", ":<redacted>@") if password else url.netloc
        text = urllib.parse.urlunsplit((url.scheme, netloc, url.path, "<redacted>" if url.query else "", url.fragment))
    return text
