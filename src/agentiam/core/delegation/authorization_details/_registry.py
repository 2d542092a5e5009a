""":class:`DetailTypeRegistry`, the types this server understands and the operations on
details of those types (parsing, narrowing, permitting a call), with the built-in
registry :data:`BUILTIN`, :func:`permits` for enforcement points and
:func:`policy_context` for the policy engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from agentiam.core.delegation.authorization_details._calls import (
    ApiCall,
    Call,
    CustomCall,
    DetailsVerdict,
    ToolCall,
)
from agentiam.core.delegation.authorization_details._detail_types import (
    _BUILTIN_TYPES,
    API_ACCESS,
    TOOL_INVOCATION,
    _fold,
    _parse_definition,
    _Type,
)
from agentiam.core.delegation.authorization_details._field_kinds import _KINDS
from agentiam.core.delegation.authorization_details._json_input import _json_size, _top_level
from agentiam.core.delegation.authorization_details._limits import (
    MAX_CUSTOM_TYPES,
    MAX_JSON_BYTES,
    DetailsRejected,
    _clip,
    _show,
)


def _call_values(call: Any) -> tuple[str, dict[str, Any]]:
    """The entry type a call is checked against and its values by field name."""
    if isinstance(call, ToolCall):
        values: dict[str, Any] = {"tools": call.tool, "arguments": call.arguments}
        if call.location is not None:
            values["locations"] = call.location
        return TOOL_INVOCATION, values
    if isinstance(call, ApiCall):
        values = {"actions": call.action, "locations": call.url}
        if call.datatype is not None:
            values["datatypes"] = call.datatype
        if call.identifier is not None:
            values["identifier"] = call.identifier
        return API_ACCESS, values
    if isinstance(call, CustomCall) and isinstance(call.values, Mapping):
        return call.type, {k: v for k, v in call.values.items() if v is not None}
    raise TypeError("call must be a ToolCall, an ApiCall or a CustomCall")


class DetailTypeRegistry:
    """The ``authorization_details`` types this server understands (RFC 9396 section
    2.1), and the operations on details of those types.

    Immutable: :meth:`builtin` gives the two built-in types, :meth:`with_types` a new
    registry with operator types added. ``names`` is what the authorization server
    metadata lists as ``authorization_details_types_supported`` (section 10)."""

    __slots__ = ("_types",)

    def __init__(self, types: Sequence[_Type] = _BUILTIN_TYPES) -> None:
        self._types: Mapping[str, _Type] = MappingProxyType({t.name: t for t in types})

    @classmethod
    def builtin(cls) -> DetailTypeRegistry:
        """A registry with only ``tool_invocation`` and ``api_access``."""
        return cls(_BUILTIN_TYPES)

    def with_types(self, definitions: Sequence[Mapping[str, Any]]) -> DetailTypeRegistry:
        """A new registry with the operator types in ``definitions`` added.

        A definition is ``{"type": name, "description": text, "fields": {field: {"kind":
        kind, "required": bool, "description": text}}}`` with kinds from
        :data:`CUSTOM_FIELD_KINDS`. A type may not redefine or shadow (same letters and
        digits, ignoring case and punctuation) a type already present, and a field named
        like an RFC 9396 section 2.2 common field must have that field's kind. Raise
        :class:`DetailsRejected` on any problem."""
        if isinstance(definitions, str | bytes | Mapping) or not isinstance(definitions, Sequence):
            raise DetailsRejected("authorization_details types must be a list of definitions")
        custom = sum(1 for t in self._types.values() if not t.builtin)
        if custom + len(definitions) > MAX_CUSTOM_TYPES:
            raise DetailsRejected(f"at most {MAX_CUSTOM_TYPES} operator-defined types")
        types = dict(self._types)
        folded = {_fold(name): name for name in types}
        for i, raw in enumerate(definitions):
            spec = _parse_definition(raw, f"types[{i}]")
            clash = folded.get(_fold(spec.name))
            if clash is not None:
                what = "the built-in type" if types[clash].builtin else "the type"
                raise DetailsRejected(
                    f"types[{i}]: {_show(spec.name)} redefines or shadows {what} {_show(clash)}"
                )
            types[spec.name] = spec
            folded[_fold(spec.name)] = spec.name
        return DetailTypeRegistry(tuple(types.values()))

    @property
    def names(self) -> tuple[str, ...]:
        """The supported type names, built-ins first (RFC 9396 section 10)."""
        return tuple(self._types)

    def describe(self) -> list[dict[str, Any]]:
        """Every type with its fields, kinds and descriptions, for metadata and docs."""
        return [t.describe() for t in self._types.values()]

    # -- parsing ---------------------------------------------------------------------------

    def _entry(self, raw: Any, index: int, *, skip_unknown: bool = False) -> dict[str, Any] | None:
        where = f"authorization_details[{index}]"
        if not isinstance(raw, dict):
            raise DetailsRejected(f"{where} must be an object")
        name = raw.get("type")
        if not isinstance(name, str) or not name:
            raise DetailsRejected(f'{where} must have a string "type" (RFC 9396 section 2)')
        spec = self._types.get(name)
        if spec is None:
            if skip_unknown:
                return None
            raise DetailsRejected(
                f"{where}: unknown type {_show(name)} (supported: {', '.join(self.names)})"
            )
        unknown = sorted(set(raw) - set(spec.fields) - {"type"})
        if unknown:
            raise DetailsRejected(
                f"{where} ({name}): unknown member {_show(unknown[0])} (RFC 9396 section 5)"
            )
        out: dict[str, Any] = {"type": name}
        for field_name, field_spec in spec.fields.items():
            if field_name not in raw:
                if field_spec.required:
                    raise DetailsRejected(f"{where} ({name}): {field_name} is required")
                continue
            out[field_name] = _KINDS[field_spec.kind].normalize(
                raw[field_name], f"{where}.{field_name}"
            )
        return out

    def _indexed(self, raw: Any, *, skip_unknown: bool = False) -> list[tuple[int, dict[str, Any]]]:
        entries = []
        for index, item in enumerate(_top_level(raw)):
            entry = self._entry(item, index, skip_unknown=skip_unknown)
            if entry is not None:
                entries.append((index, entry))
        return entries

    def parse(self, raw: Any) -> tuple[dict[str, Any], ...]:
        """Check and normalise ``authorization_details`` (RFC 9396 sections 2, 3, 5).

        ``raw`` is the JSON text of the request parameter (str or bytes) or an already
        decoded array. Every entry must be an object of a known type holding only that
        type's members, each well formed; anything else raises :class:`DetailsRejected`
        (the ``invalid_authorization_details`` error of section 5).

        The result is plain JSON, normalised so that equal requests compare equal: sets
        sorted without duplicates, HTTP methods upper case, URIs in normal form,
        integral numbers as integers, and exact duplicate entries dropped (order is
        otherwise kept). Parsing the result again gives the same result."""
        out: list[dict[str, Any]] = []
        for _, entry in self._indexed(raw):
            if entry not in out:
                out.append(entry)
        if _json_size(out) > MAX_JSON_BYTES:  # normal forms can be a little longer
            raise DetailsRejected(
                f"authorization_details is larger than {MAX_JSON_BYTES} bytes of JSON"
            )
        return tuple(out)

    # -- narrowing (RFC 9396 section 6.1) ---------------------------------------------------

    def _entry_narrowing(
        self, spec: _Type, requested: Mapping[str, Any], granted: Mapping[str, Any]
    ) -> str | None:
        for field_name, field_spec in spec.fields.items():
            if field_name not in granted:
                continue  # unconstrained in the grant
            if field_name not in requested:
                return f"{field_name} is limited by the grant but left open in the request"
            problem = _KINDS[field_spec.kind].narrowing(
                requested[field_name], granted[field_name], field_name
            )
            if problem is not None:
                return problem
        return None

    def narrowing_problem(self, requested: Any, granted: Any) -> str | None:
        """None when ``requested`` is at most as wide as ``granted``; else why not.

        RFC 9396 section 6.1 lets a token request ask for a subset of what was
        authorised; the same rule makes every delegation hop narrower. Each requested
        entry must be covered by one granted entry of its type: every field the granted
        entry constrains is constrained at least as tightly in the requested one (a
        field left out means "any", so leaving out a granted field widens), and fields
        the granted entry leaves out are free. An entry is not split across several
        granted entries. Nothing requested is always fine.

        Both sides are parsed first; raise :class:`DetailsRejected` if either is
        malformed (the message says which)."""
        wanted = self._indexed(requested)
        try:
            held = self._indexed(granted)
        except DetailsRejected as exc:
            raise DetailsRejected(f"the granted details are malformed: {exc}") from None
        for index, entry in wanted:
            name = entry["type"]
            candidates = [(j, g) for j, g in held if g["type"] == name]
            if not candidates:
                return f"authorization_details[{index}] ({name}): nothing of this type is granted"
            first: tuple[int, str] | None = None
            for j, grant in candidates:
                problem = self._entry_narrowing(self._types[name], entry, grant)
                if problem is None:
                    break
                if first is None:
                    first = (j, problem)
            else:
                assert first is not None
                more = f" and {len(candidates) - 1} other(s)" if len(candidates) > 1 else ""
                return (
                    f"authorization_details[{index}] ({name}) is wider than granted entry "
                    f"{first[0]}{more}: {first[1]}"
                )
        return None

    # -- enforcement ------------------------------------------------------------------------

    def permits(self, details: Any, call: Call) -> DetailsVerdict:
        """Whether ``details`` (a token's ``authorization_details``, RFC 9396 section
        9.1) permit ``call``.

        Allowed when some entry of the call's type covers it: for every field the entry
        constrains, the call gives a value the field admits (a missing value, such as a
        constrained argument the call leaves out or a location the enforcement point
        does not know, is not admitted); fields the entry leaves out are free. Values
        the call gives for fields the type does not define deny the call.

        A :class:`ToolCall` is matched against ``tool_invocation`` entries, an
        :class:`ApiCall` against ``api_access`` entries, a :class:`CustomCall` against
        entries of its ``type`` with ``values`` keyed by field name: ``set`` takes a
        string or a list of strings (all listed), ``uri_set`` a URI (equal to or
        beneath a listed one; its query is ignored), ``exact`` an equal string,
        ``max_number``/``min_number`` a number within the limit.

        Entries of types this registry does not know are skipped (they cannot permit
        the call); malformed details, no entry of the call's type, or none that covers
        the call deny. Whether a token *without* details is limited at all is for the
        caller to decide."""
        try:
            name, values = _call_values(call)
        except TypeError as exc:
            return DetailsVerdict(False, str(exc), None)
        spec = self._types.get(name)
        if spec is None:
            return DetailsVerdict(False, f"the type {_show(name)} is not supported", None)
        extra = sorted(set(values) - set(spec.fields))
        if extra:
            return DetailsVerdict(
                False, f"the call gives {_show(extra[0])}, which {name} does not define", None
            )
        try:
            entries = self._indexed(details if details is not None else [], skip_unknown=True)
        except DetailsRejected as exc:
            return DetailsVerdict(False, f"the authorization_details are malformed: {exc}", None)
        reasons: list[str] = []
        for index, entry in entries:
            if entry["type"] != name:
                continue
            problem = self._entry_matching(spec, entry, values)
            if problem is None:
                return DetailsVerdict(
                    True, f"authorization_details[{index}] ({name}) permits the call", index
                )
            reasons.append(f"[{index}] {problem}")
        if not reasons:
            return DetailsVerdict(False, f"no authorization_details entry of type {name}", None)
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        return DetailsVerdict(
            False, _clip(f"no authorization_details entry permits the call: {shown}", 500), None
        )

    def _entry_matching(
        self, spec: _Type, entry: Mapping[str, Any], values: Mapping[str, Any]
    ) -> str | None:
        for field_name, field_spec in spec.fields.items():
            if field_name not in entry:
                continue
            if field_name not in values:
                return f"the call gives no {field_name}, which the entry limits"
            problem = _KINDS[field_spec.kind].matching(
                entry[field_name], values[field_name], field_name
            )
            if problem is not None:
                return problem
        return None


BUILTIN: Final = DetailTypeRegistry.builtin()


def permits(details: Any, call: Call, registry: DetailTypeRegistry = BUILTIN) -> DetailsVerdict:
    """Whether a token's ``authorization_details`` permit ``call``: the check every
    enforcement point makes for a task-scoped token (RFC 9396 section 9.1). See
    :meth:`DetailTypeRegistry.permits`; enforcement points that serve operator types
    pass the control plane's registry."""
    return registry.permits(details, call)


_POLICY_SETS: Final = ("tools", "actions", "locations", "datatypes")


def policy_context(details: Any) -> list[dict[str, Any]]:
    """The ``authorization_details`` policy context: one record per entry with
    ``type`` and, where the entry has them, ``tools``, ``actions``, ``locations``,
    ``datatypes`` (lists of strings) and ``identifier`` (a string). Other members (tool
    argument constraints, operator fields) are left to :func:`permits`.

    ``details`` are parsed details (a token's claim). Raise :class:`DetailsRejected`
    when an entry or one of those members has another shape, rather than hide it."""
    if not isinstance(details, list | tuple):
        raise DetailsRejected("authorization_details must be an array of objects")
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(details):
        where = f"authorization_details[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise DetailsRejected(f'{where} must be an object with a string "type"')
        record: dict[str, Any] = {"type": entry["type"]}
        for member in _POLICY_SETS:
            if member in entry:
                value = entry[member]
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise DetailsRejected(f"{where}.{member} must be an array of strings")
                record[member] = list(value)
        if "identifier" in entry:
            if not isinstance(entry["identifier"], str):
                raise DetailsRejected(f"{where}.identifier must be a string")
            record["identifier"] = entry["identifier"]
        out.append(record)
    return out
