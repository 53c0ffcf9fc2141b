"""Build the Lightning pieces from a composed Hydra config (shared by train, eval, predict and the tests).

Every config value is checked against the type its ``_target_`` declares before anything is built
(:func:`check_config`), so ``trainer.max_steps=abc`` fails at once with the key, the value, the expected type and a
fix, not as a ``TypeError`` deep inside Lightning after the frozen VFMs have loaded.
"""

from __future__ import annotations

import collections.abc as cabc
import difflib
import importlib
import inspect
import re
import sys
import types
import typing
from pathlib import PurePath
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.models.module import SegmentationModule
from src.utils.checkpoint import UserError

#: the package whose modules a ``_target_`` may be imported from for the check (any other must be imported already)
_OWN_PACKAGE = __name__.split(".")[0]
_EMPTY = inspect.Parameter.empty
#: an interpolation that is just another key, ``${seed}``: the fix names that key
_PLAIN_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")
#: the leading number of a mistyped one, ``1e-4x`` -> ``1e-4``
_NUMBER_PREFIX = re.compile(r"^\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?")
#: stands for "a number" where a parameter has no annotation but a numeric default
_NUMBER = typing.NewType("number", float)


class ConfigTypeError(TypeError, UserError):
    """A config value that cannot have the type the signature of its ``_target_`` declares, or an unknown key."""


# --------------------------------------------------------------------------- the check


def _lookup(name: str) -> Any:
    """The callable a ``_target_`` names, or None. Never imports a module outside this package.

    Hydra's instantiate applies its target policy before importing; this check runs before it, so it only looks
    at modules already imported (torch, lightning, …) and this package's own; other targets are not checked.
    """
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        module = sys.modules.get(module_name)
        if module is None and (module_name == _OWN_PACKAGE or module_name.startswith(f"{_OWN_PACKAGE}.")):
            try:
                module = importlib.import_module(module_name)
            except Exception:  # instantiate reports an unimportable target itself
                module = None
        if module is None:
            continue
        obj: Any = module
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj if callable(obj) else None
    return None


def _signature(target: Any) -> tuple[inspect.Signature | None, dict[str, Any]]:
    """The call signature of ``target`` and the type hints of its parameters that can be resolved."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None, {}
    func = inspect.unwrap(target.__init__ if isinstance(target, type) else target)
    try:
        return sig, typing.get_type_hints(func)
    except Exception:  # one unresolvable annotation (TYPE_CHECKING import): resolve the others
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(func, "__globals__", {})
    for name, param in sig.parameters.items():
        annotation = param.annotation
        if isinstance(annotation, str):  # resolved alone, as get_type_hints does for all of them
            holder = type("_Annotation", (), {"__annotations__": {"value": annotation}})
            try:
                annotation = typing.get_type_hints(holder, namespace)["value"]
            except Exception:  # leave this parameter unchecked
                continue
        if annotation is not _EMPTY:
            hints[name] = annotation
    return sig, hints


def _is_int_text(text: str) -> bool:
    try:
        return float(text.strip().replace("_", "")).is_integer()
    except ValueError:
        return False


def _is_float_text(text: str) -> bool:
    try:
        float(text.strip().replace("_", ""))
    except ValueError:
        return False
    return True


_ABSTRACT_SEQUENCES = (cabc.Sequence, cabc.Iterable, cabc.Collection, cabc.MutableSequence)
_CONCRETE_SEQUENCES = (list, tuple, set, frozenset)
_MAPPINGS = (dict, cabc.Mapping, cabc.MutableMapping)


def _fits(value: Any, tp: Any) -> bool | None:
    """Whether a plain config value can be of type ``tp``: True, False (clearly not), None (cannot tell).

    Conservative: only a value that no conversion in the target could make right is False (a non-numeric string
    for a number, a fraction for an int, a scalar for a list or dict, a value outside a Literal).
    """
    if tp is Any or tp is object or tp is _EMPTY or isinstance(tp, typing.TypeVar):
        return None
    if value is None:
        return True if tp is type(None) else None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _fits(value, args[0])
    if origin is typing.Union or origin is types.UnionType:
        verdicts = [_fits(value, a) for a in args if a is not type(None)]
        if any(v is True for v in verdicts):
            return True
        return False if verdicts and all(v is False for v in verdicts) else None
    if origin is typing.Literal:
        if all(isinstance(a, (str, int, float, bool)) for a in args):
            return value in args
        return None
    if tp is type(None):
        return False
    if isinstance(value, (list, dict)) and tp in (bool, int, float, str):
        return None  # annotations are often narrower than the code (an img_size: int that takes [h, w])
    if tp is bool:
        return not isinstance(value, str)
    if tp is int:
        if isinstance(value, bool):
            return None
        if isinstance(value, float):
            return value.is_integer()
        return _is_int_text(value) if isinstance(value, str) else True
    if tp is float:
        if isinstance(value, bool):
            return None
        return _is_float_text(value) if isinstance(value, str) else True
    if tp is str:
        return True
    if isinstance(tp, type) and issubclass(tp, torch.Tensor):
        if isinstance(value, str):
            return False
        return True if isinstance(value, (int, float)) else None
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return True if isinstance(value, str) else None
    container = origin if origin is not None else tp
    if container in _CONCRETE_SEQUENCES or container in _ABSTRACT_SEQUENCES:
        if not isinstance(value, list):
            if container in _ABSTRACT_SEQUENCES:
                return False if isinstance(value, (int, float, bool)) else None
            return False
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                return False
            verdicts = [_fits(v, a) for v, a in zip(value, args)]
        elif args:
            verdicts = [_fits(v, args[0]) for v in value]
        else:
            return True
        return False if any(v is False for v in verdicts) else True
    if container in _MAPPINGS:
        if not isinstance(value, dict):
            return None if isinstance(value, list) else False  # a list of pairs may become a dict
        if len(args) == 2:
            return False if any(_fits(v, args[1]) is False for v in value.values()) else True
        return True
    return None


def _type_name(tp: Any) -> str:
    """A readable name of an annotation: ``int``, ``float or null``, ``one of 'a', 'b'``, ``list[int]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Annotated:
        return _type_name(args[0])
    allowed = _literal_values(tp)
    if allowed:
        nullable = " or null" if type(None) in args else ""
        return "one of " + ", ".join(repr(a) for a in allowed) + nullable
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{base}[{inner}]" if args else base
    if tp is _NUMBER:
        return "a number (as its default)"
    return getattr(tp, "__name__", str(tp))


def _plain(tp: Any) -> Any:
    """The annotation without null (Optional[X] -> X; a Union of several stays)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return members[0]
        scalar = [a for a in members if a in (int, float, bool, str)]
        if scalar:
            return scalar[0] if float not in scalar else float
    return tp


def _example(value: Any, tp: Any, default: Any) -> str:
    """A value of type ``tp`` to show in the fix: the number the user probably meant, the default, or a sample."""
    allowed = _literal_values(tp)
    if allowed:
        texts = [str(a) for a in allowed]
        return (difflib.get_close_matches(str(value), texts, n=1, cutoff=0.5) or texts)[0]
    tp = _plain(tp)
    if tp in (int, float, _NUMBER) and isinstance(value, str):
        found = _NUMBER_PREFIX.match(value)
        if found and _is_float_text(found.group(0)):
            text = found.group(0).strip()
            return str(int(float(text))) if tp is int and not _is_int_text(text) else text
    if tp is int and isinstance(value, float):
        return str(max(round(value), 1) if value > 0 else round(value))
    if tp is int:
        return str(default) if type(default) is int and default >= 0 else "40000"
    if tp in (float, _NUMBER):
        return str(default) if type(default) in (int, float) and default > 0 else "0.0001"
    if tp is bool:
        return "true"
    if isinstance(default, (list, tuple)):
        return "[" + ",".join(str(v) for v in default) + "]"
    if typing.get_origin(tp) in (list, tuple, set) or tp in (list, tuple, set):
        return "[...]"
    if typing.get_origin(tp) in _MAPPINGS or tp in _MAPPINGS:
        return "{...}"
    return "<value>"


def _literal_values(tp: Any) -> list[Any]:
    """Every value a Literal annotation (or a Union of Literals and null) allows; [] for any other annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return list(args)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        if members and all(typing.get_origin(a) is typing.Literal for a in members):
            return [v for a in members for v in typing.get_args(a)]
    return []


def _wrong_items(value: Any, tp: Any, key: str) -> list[tuple[str, Any, Any]]:
    """The (key, value, expected type) to report for a value that does not fit ``tp``: the bad items of a dict
    or list whose items have the wrong type, else the value itself."""
    plain = _plain(tp)
    origin, args = typing.get_origin(plain), typing.get_args(plain)
    items: list[tuple[str, Any, Any]] = []
    if isinstance(value, dict) and origin in _MAPPINGS and len(args) == 2:
        items = [(f"{key}.{k}", v, args[1]) for k, v in value.items() if _fits(v, args[1]) is False]
    elif isinstance(value, list) and args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)):
        items = [(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value) if _fits(v, args[0]) is False]
    elif isinstance(value, list) and origin is tuple and len(args) == len(value):
        items = [(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)) if _fits(v, a) is False]
    return items or [(key, value, tp)]


def _kind(tp: Any) -> str:
    """What to give instead, in words."""
    if _literal_values(tp):
        return "one of these values"
    tp = _plain(tp)
    if tp is int:
        return "a whole number"
    if tp in (float, _NUMBER):
        return "a number"
    if tp is bool:
        return "true or false"
    container = typing.get_origin(tp) or tp
    if container in _CONCRETE_SEQUENCES or container in _ABSTRACT_SEQUENCES:
        return "a list"
    if container in _MAPPINGS:
        return "a mapping"
    return f"a value of type {_type_name(tp)}"


def _leaf(node: DictConfig | ListConfig, key: Any) -> tuple[bool, Any, str | None]:
    """(resolved?, the value as the target will receive it, the interpolation it came from or None)."""
    source = None
    if OmegaConf.is_interpolation(node, key):
        source = str(node._get_node(key)._value())
    try:
        value = node[key]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except Exception:  # an interpolation only a running Hydra app resolves: not checked
        return False, None, source
    return True, value, source


def _check_target(node: DictConfig, key: str, problems: list[str]) -> None:
    """Check each key of a ``_target_`` node against its signature, then the nodes under it."""
    try:
        target_name = node["_target_"]
    except Exception:
        target_name = None
    target = _lookup(target_name) if isinstance(target_name, str) else None
    sig, hints = _signature(target) if target is not None else (None, {})
    params = sig.parameters if sig is not None else {}
    takes_any = sig is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in node.keys():
        name = str(name)
        if name.startswith("_") and name.endswith("_"):
            continue  # _target_, _partial_, _recursive_, _convert_, _args_
        full = f"{key}.{name}" if key else name
        child = node._get_node(name)
        if isinstance(child, (DictConfig, ListConfig)) and not OmegaConf.is_interpolation(node, name):
            _walk(child, full, problems)
            if isinstance(child, DictConfig) and "_target_" in child:
                continue  # instantiated into an object: its own keys are checked
        param = params.get(name)
        if param is None:
            if not takes_any:
                close = difflib.get_close_matches(name, list(params), n=1)
                names = ", ".join(params) if len(params) <= 16 else f"{', '.join(list(params)[:16])}, …"
                fix = f"rename it to {key}.{close[0]}" if close else f"remove it; {target_name} takes {names}"
                problems.append(f"{full}: {target_name} takes no parameter {name!r}\n    fix: {fix}")
            continue
        tp = hints.get(name, _EMPTY)
        if tp is _EMPTY and type(param.default) in (int, float):
            tp = _NUMBER  # unannotated, numeric default: only a non-numeric string is flagged
        if tp is _EMPTY:
            continue
        resolved, value, source = _leaf(node, name)
        if not resolved:
            continue
        verdict = _fits(value, float if tp is _NUMBER else tp)
        if verdict is not False:
            continue
        origin = f" (from {source})" if source else ""
        plain = _PLAIN_INTERPOLATION.match(source or "")
        for item_key, item, item_tp in _wrong_items(value, tp, full):
            fix_key, example = item_key, _example(item, item_tp, param.default if item_key == full else None)
            if plain and item_key == full:
                fix_key = plain.group(1)  # the interpolation's source is what the user set
            elif item_key.endswith("]"):  # a list item: the fix is the whole list, as the command line takes it
                index = int(item_key[item_key.rindex("[") + 1 : -1])
                default = param.default if isinstance(param.default, (list, tuple)) else ()
                if index < len(default):
                    example = _example(item, item_tp, default[index])
                fix_key = full
                example = "[" + ",".join(example if i == index else str(v) for i, v in enumerate(value)) + "]"
            problems.append(
                f"{item_key}={item!r}{origin}: {target_name} expects {item_key[len(key) + 1 :]} to be "
                f"{_type_name(item_tp)}\n    fix: give it {_kind(item_tp)}, e.g. {fix_key}={example}"
            )


def _walk(node: Any, key: str, problems: list[str]) -> None:
    """Find every ``_target_`` node under ``node`` (dicts and lists of them included) and check it."""
    if isinstance(node, DictConfig):
        if node._is_missing() or node._is_none():
            return
        if "_target_" in node:
            _check_target(node, key, problems)
            return
        for name in node.keys():
            if not OmegaConf.is_interpolation(node, name):
                child = node._get_node(name)
                if isinstance(child, (DictConfig, ListConfig)):
                    _walk(child, f"{key}.{name}" if key else str(name), problems)
    elif isinstance(node, ListConfig):
        if node._is_missing() or node._is_none():
            return
        for i in range(len(node)):
            if not OmegaConf.is_interpolation(node, i):
                child = node._get_node(i)
                if isinstance(child, (DictConfig, ListConfig)):
                    _walk(child, f"{key}[{i}]", problems)


def config_type_problems(node: Any, key: str = "") -> list[str]:
    """One line (and its fix) per value under ``node`` that cannot have the type its ``_target_`` declares.

    ``key`` is the node's full key in the run config (``trainer``, ``model``) so the lines name what to type on
    the command line. Handles Optional/Union/Literal/list/tuple/dict annotations, ``_partial_`` targets, nested
    ``_target_`` configs, lists of them, and interpolations (checked as resolved, the fix names their source key).
    Values it cannot judge (unresolvable interpolations, untyped parameters, targets outside already-imported
    modules) pass: this check only catches what would certainly fail or go wrong later.
    """
    problems: list[str] = []
    _walk(node, key, problems)
    return problems


def _raise_for(problems: list[str]) -> None:
    if problems:
        count = "a config value does" if len(problems) == 1 else f"{len(problems)} config values do"
        raise ConfigTypeError(
            f"{count} not fit the type its target expects (checked before anything is built):\n  "
            + "\n  ".join(problems)
        )


def check_config_types(node: Any, key: str = "") -> None:
    """Raise :class:`ConfigTypeError` naming every wrong-typed value under ``node`` (see config_type_problems)."""
    _raise_for(config_type_problems(node, key))


def check_config(cfg: DictConfig) -> None:
    """Check every ``_target_`` node of a run config (data, model, trainer, callbacks, logger, …) at once."""
    _raise_for(config_type_problems(cfg, ""))


# --------------------------------------------------------------------------- building


def _readable(err: InstantiationException) -> InstantiationException:
    """Hydra embeds ``repr(cause)`` in its message: a multi-line message then reads as one line with literal \\n."""
    cause = err.__cause__
    if cause is None or isinstance(cause, UserError) or repr(cause) not in str(err):
        return err
    readable = InstantiationException(str(err).replace(repr(cause), f"{type(cause).__name__}: {cause}"))
    readable.__cause__ = cause
    return readable


def _full_key(node: Any) -> str:
    try:
        return str(node._get_full_key(None) or "")
    except Exception:
        return ""


def instantiate_checked(node: Any, key: str | None = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` after :func:`check_config_types` on the node.

    ``key`` is the node's key in the run config (``data``); by default the node's own full key. An error raised
    by a target reaches the user as readable text (Hydra itself shows the cause's ``repr``).
    """
    check_config_types(node, _full_key(node) if key is None else key)
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        readable = _readable(err)
        if readable is err:
            raise
        raise readable from err.__cause__


def import_requested(cfg: DictConfig) -> None:
    """Import the modules listed in the run config's ``imports`` (e.g. one that registers a backbone family with
    ``register_family``, docs/extending.md §3), before anything is built. Hydra imports ``_target_`` modules
    itself; this is for modules that only register something."""
    for name in cfg.get("imports") or []:
        try:
            importlib.import_module(str(name))
        except ImportError as err:
            raise ConfigTypeError(
                f"imports: cannot import {name!r} ({type(err).__name__}: {err})\n"
                "  fix: put the folder that holds it on PYTHONPATH, or remove it from `imports`"
            ) from err


def build_module(cfg: DictConfig) -> SegmentationModule:
    """Instantiate ``cfg.model`` and hand it the resolved segmenter config, which checkpoints record.

    The whole run config is type-checked first (:func:`check_config`), so a wrong value anywhere (data, trainer,
    callbacks) fails before the model, the heavy part, is built.
    """
    import_requested(cfg)
    check_config(cfg)
    module = instantiate_checked(cfg.model, "model")
    # set afterwards: passed to instantiate, its _target_ entries would be instantiated too
    module.model_config = OmegaConf.to_container(cfg.model.segmenter, resolve=True)
    return module


def build_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate_checked(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The trainer with the configured callbacks and loggers; ``overrides`` replace any Trainer argument."""
    kwargs = {"callbacks": build_list(cfg.get("callbacks")), "logger": build_list(cfg.get("logger")) or False}
    return instantiate_checked(cfg.trainer, "trainer", **{**kwargs, **overrides})
