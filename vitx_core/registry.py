"""Explainer base class and the registry (keys are stable: they are stored in the database).

An explainer is one small class: metadata as class attributes, a frozen ``Params`` dataclass
(defaults + ``Literal`` choices, from which the UI builds widgets) and ``compute(cap, adapter, x)``
returning a patch-grid map ``(B, gh, gw)``: float32, finite, >= 0, before any normalisation.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from torch import Tensor

from .capture import Capture, Needs

Kind = Literal["capture", "model"]

_EXPLAINERS: dict[str, type[Explainer]] = {}


@dataclass(frozen=True)
class NoParams:
    pass


def value_fits(tp: Any, v: Any) -> bool:
    """Does ``v`` match the (simple) annotation ``tp`` (Literal, unions, tuples, bool/int/float,
    classes)? Unknown annotations: True. Used to check explainer options from the CLI and TOML."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(value_fits(m, v) for m in typing.get_args(tp))
    if tp is type(None) or tp is None:
        return v is None
    if origin is Literal:
        return any(v == c and type(v) is type(c) for c in typing.get_args(tp))
    if tp is tuple or origin is tuple:
        if not isinstance(v, tuple):
            return False
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(value_fits(args[0], x) for x in v)
        return not args or (len(args) == len(v) and all(value_fits(a, x) for a, x in zip(args, v)))
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(tp, type):
        return isinstance(v, tp)
    return True


def _check_literals(params: Any) -> None:
    hints = typing.get_type_hints(type(params))
    for f in dataclasses.fields(params):
        tp = hints.get(f.name)
        value = getattr(params, f.name)
        if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            raise ValueError(f"{type(params).__qualname__}.{f.name} must be one of "
                             f"{list(typing.get_args(tp))}, got {value!r}")


class Explainer(ABC):
    """Base of every explainer. Subclasses set the metadata and implement :meth:`compute`.

    Class attributes:
        name: registry key, stable forever (stored with ratings and results).
        title: human label; paper_url: where the maths comes from.
        kind: ``capture`` (pure algebra on the shared pass) or ``model`` (extra model passes).
        needs: what the shared pass must capture.
        on_demand: not part of the default one-pass set (slow or many passes).
        signed: the raw method is signed (exposes ``sign``); the contract map is still >= 0.
        Params: frozen dataclass of options; presets: named option sets.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    paper_url: ClassVar[str] = ""
    kind: ClassVar[Kind] = "capture"
    needs: ClassVar[Needs] = Needs()
    on_demand: ClassVar[bool] = False
    Params: ClassVar[type] = NoParams
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, **params: Any) -> None:
        known = {f.name for f in dataclasses.fields(self.Params)}
        unknown = set(params) - known
        if unknown:
            raise TypeError(f"{self.name}: unknown option(s) {sorted(unknown)}; "
                            f"known: {sorted(known)}")
        self.params = self.Params(**params)
        _check_literals(self.params)
        self.validate()

    def validate(self) -> None:
        """Extra option checks (ranges); raise ``ValueError`` with a clear message."""

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> Explainer:
        if preset not in cls.presets:
            raise KeyError(f"{cls.name}: unknown preset {preset!r}; known: {sorted(cls.presets)}")
        return cls(**{**cls.presets[preset], **overrides})

    def needs_for(self) -> Needs:
        """Needs of this configured instance (defaults to the class's)."""
        return self.needs

    @property
    def params_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self.params))

    @property
    def params_json(self) -> str:
        """Canonical JSON of all options (defaults filled, sorted keys): a cache / DB key."""
        return json.dumps(self.params_dict, sort_keys=True, separators=(",", ":"))

    @abstractmethod
    def compute(self, cap: Capture, adapter: Any, x: Tensor) -> Tensor | tuple[Tensor, dict]:
        """-> ``(B, gh, gw)`` float32, finite, >= 0; optionally with extras ``{name: array}``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params_json})"


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def register_explainer(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator; a duplicate name raises ``ValueError``."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise ValueError(f"{cls.__name__} has no registry name")
    if name in _EXPLAINERS:
        raise ValueError(f"explainer {name!r} already registered by "
                         f"{_EXPLAINERS[name].__qualname__}")
    _EXPLAINERS[name] = cls
    return cls


def get_explainer_class(name: str) -> type[Explainer]:
    try:
        return _EXPLAINERS[name]
    except KeyError:
        raise KeyError(f"unknown explainer {name!r}; known: {sorted(_EXPLAINERS)}") from None


def get_explainer(name: str, **params: Any) -> Explainer:
    """Instantiate a registered explainer with options (unknown name lists the known ones)."""
    return get_explainer_class(name)(**params)


@dataclass(frozen=True)
class ExplainerInfo:
    name: str
    title: str
    kind: str
    on_demand: bool
    paper_url: str
    params: dict[str, dict[str, Any]]
    presets: dict[str, dict[str, Any]]


def _params_schema(P: type) -> dict[str, dict[str, Any]]:
    hints = typing.get_type_hints(P)
    out = {}
    for f in dataclasses.fields(P):
        tp = hints.get(f.name)
        entry: dict[str, Any] = {"default": _jsonable(f.default)}
        if typing.get_origin(tp) is Literal:
            entry["choices"] = list(typing.get_args(tp))
        entry["type"] = getattr(tp, "__name__", str(tp))
        out[f.name] = entry
    return out


def list_explainers(*, kind: Kind | None = None, include_on_demand: bool = True
                    ) -> list[ExplainerInfo]:
    """Metadata of every registered explainer (UI pickers and test parametrisation)."""
    out = []
    for name, cls in _EXPLAINERS.items():
        if kind is not None and cls.kind != kind:
            continue
        if cls.on_demand and not include_on_demand:
            continue
        out.append(ExplainerInfo(name, cls.title, cls.kind, cls.on_demand, cls.paper_url,
                                 _params_schema(cls.Params), dict(cls.presets)))
    return out


def default_methods() -> list[str]:
    """The one-pass set computed when no methods are named."""
    return [i.name for i in list_explainers(include_on_demand=False)]
