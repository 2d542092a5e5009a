"""Policy templates for the common patterns.

Cedar's own templates have only two slots (``?principal`` and ``?resource``), which
cannot express business hours or an amount limit, so AgentIAM's templates are
parameterised generators of ordinary static policies. Every parameter is checked
against its declared kind and written as a Cedar literal (strings escaped, entity
ids quoted, numbers range-checked), so a parameter can never inject policy text. The
rendered policy is validated against the schema like any other before it is stored,
and it records its template name.

Templates:

* ``read_only_agent`` — forbid an agent (or group) every action that is not a read
  (``read_actions``) or a ``read_only`` tool.
* ``tool_allowlist`` — permit a principal to invoke exactly the listed tools.
* ``business_hours`` — forbid outside given hours and weekdays (policy time zone).
* ``amount_limit`` — forbid a tool call whose argument exceeds a maximum (or is absent).
* ``environment_boundary`` — forbid agents acting on resources of another environment.
* ``approval_above_risk`` — forbid, without human approval, when the risk score is at
  or above a threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentiam.core.policy.schema import Schema
from agentiam.core.policy.values import ValueTypeError, cedar_string, entity_literal, to_cedar
from agentiam.errors import InvalidInput

__all__ = ["TEMPLATES", "Param", "PolicyTemplate", "render_template"]

MAX_LIST = 200
PRINCIPAL_SCOPE_TYPES = ("Agent", "AgentGroup", "Environment")


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: str  # principal | entity_ids | string | int | int_list | action_group
    description: str
    required: bool = True
    default: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "required": self.required,
            "default": self.default,
        }


@dataclass(frozen=True, slots=True)
class PolicyTemplate:
    name: str
    description: str
    params: tuple[Param, ...]
    render: Callable[[Mapping[str, Any], Schema], str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": [p.to_dict() for p in self.params],
        }


def _principal(value: Any) -> str:
    """A principal scope parameter: {"type": Agent|AgentGroup|Environment, "id": …}
    or the string "any". Returns the Cedar scope clause."""
    if value in (None, "any"):
        return "principal"  # agents and humans alike
    if not (isinstance(value, Mapping) and set(value) == {"type", "id"}):
        raise InvalidInput('principal must be "any" or {"type": …, "id": …}')
    etype, eid = value["type"], value["id"]
    if etype not in PRINCIPAL_SCOPE_TYPES or not isinstance(eid, str) or not eid:
        raise InvalidInput(f"principal type must be one of {', '.join(PRINCIPAL_SCOPE_TYPES)}")
    op = "==" if etype == "Agent" else "in"
    return f"principal {op} {entity_literal(etype, eid)}"


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}")
    return value


def _ids(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > MAX_LIST:
        raise InvalidInput(f"{name} must be a list of 1-{MAX_LIST} ids")
    if not all(isinstance(v, str) and 0 < len(v) <= 512 for v in value):
        raise InvalidInput(f"{name}: every id must be a non-empty string")
    return list(dict.fromkeys(value))


def _name(value: Any, name: str) -> str:
    """A non-empty string parameter (an entity id or a name)."""
    if not isinstance(value, str) or not value or len(value) > 512:
        raise InvalidInput(f"{name} must be a non-empty string")
    return value


def _action_scope(value: Any) -> str:
    if value in (None, "any"):
        return "action"
    groups = ("read_actions", "write_actions", "delete_actions", "http")
    if value == "invoke_tool":
        return 'action == Action::"invoke_tool"'
    if value not in groups:
        raise InvalidInput(f"actions must be 'any', 'invoke_tool' or one of {', '.join(groups)}")
    return f"action in {entity_literal('Action', value)}"


def _read_only(p: Mapping[str, Any], _schema: Schema) -> str:
    return (
        f"forbid ({_principal(p['principal'])}, action, resource)\n"
        'unless { action in Action::"read_actions" || '
        "(resource is Tool && resource has read_only && resource.read_only) };"
    )


def _tool_allowlist(p: Mapping[str, Any], _schema: Schema) -> str:
    tools = ", ".join(entity_literal("Tool", t) for t in _ids(p["tools"], "tools"))
    server = p.get("server")
    resource = (
        f"resource is Tool in {entity_literal('McpServer', _name(server, 'server'))}"
        if server is not None
        else "resource is Tool"
    )
    return (
        f'permit ({_principal(p["principal"])}, action == Action::"invoke_tool", {resource})\n'
        f"when {{ [{tools}].contains(resource) }};"
    )


def _business_hours(p: Mapping[str, Any], _schema: Schema) -> str:
    start = _int(p.get("start_hour", 8), "start_hour", 0, 23)
    end = _int(p.get("end_hour", 18), "end_hour", 1, 24)
    if end <= start:
        raise InvalidInput("end_hour must be after start_hour")
    days_in = p.get("weekdays", [1, 2, 3, 4, 5])
    if not isinstance(days_in, list) or not days_in:
        raise InvalidInput("weekdays must be a non-empty list of ISO weekdays (1 = Monday)")
    days = sorted({_int(d, "weekdays", 1, 7) for d in days_in})
    return (
        f"forbid ({_principal(p.get('principal'))}, {_action_scope(p.get('actions'))}, resource)\n"
        f"unless {{ context.time.hour >= {start} && context.time.hour < {end} && "
        f"[{', '.join(map(str, days))}].contains(context.time.weekday) }};"
    )


def _amount_limit(p: Mapping[str, Any], schema: Schema) -> str:
    argument = p.get("argument", "amount")
    declared = schema.common_types["ToolArguments"]["attributes"]
    if not isinstance(argument, str) or argument not in declared:
        raise InvalidInput(
            f"tool argument {argument!r} is not declared in the schema",
            hint="Declare it in the schema extension under commonTypes.ToolArguments.",
        )
    kind = declared[argument].get("type")
    maximum = p["maximum"]
    if kind == "Long":
        within = f"context.args.{argument} <= {_int(maximum, 'maximum', 0, 2**63 - 1)}"
    elif kind == "Extension" and declared[argument].get("name") == "decimal":
        if isinstance(maximum, bool) or not isinstance(maximum, int | float | str):
            raise InvalidInput("maximum must be a number")
        try:  # exactly the value given, never rounded up (no float on the way)
            converted = to_cedar(
                maximum if not isinstance(maximum, float) else repr(maximum),
                {"type": "Extension", "name": "decimal"},
                {},
                path="maximum",
            )
        except ValueTypeError as exc:
            raise InvalidInput(str(exc)) from None
        literal = cedar_string(converted["__extn"]["arg"])
        within = f"context.args.{argument}.lessThanOrEqual(decimal({literal}))"
    else:
        raise InvalidInput(f"tool argument {argument} must be a Long or a decimal")
    tool = p.get("tool")
    resource = (
        f"resource == {entity_literal('Tool', _name(tool, 'tool'))}"
        if tool is not None
        else "resource is Tool"
    )
    # Fail closed: a call without the argument is refused too.
    return (
        f'forbid ({_principal(p.get("principal"))}, action == Action::"invoke_tool", {resource})\n'
        f"unless {{ context.args has {argument} && {within} }};"
    )


def _environment_boundary(p: Mapping[str, Any], _schema: Schema) -> str:
    environment = p.get("environment")
    if environment is None:
        scope = "principal is Agent"  # the boundary compares agents' environments
    elif isinstance(environment, str) and environment:
        scope = f"principal in {entity_literal('Environment', environment)}"
    else:
        raise InvalidInput("environment must be a non-empty string")
    return (
        f"forbid ({scope}, action, resource)\n"
        "when { (resource has environment && resource.environment != principal.environment)"
        ' || (context.source_environment != "unknown" && '
        "context.source_environment != principal.environment) };"
    )


def _approval_above_risk(p: Mapping[str, Any], _schema: Schema) -> str:
    threshold = _int(p["threshold"], "threshold", 0, 100)
    return (
        f"forbid ({_principal(p.get('principal'))}, {_action_scope(p.get('actions'))}, resource)\n"
        f'when {{ context.risk_score >= {threshold} && context.approval.state != "approved" }};'
    )


_PRINCIPAL = Param(
    "principal",
    "principal",
    '"any", or {"type": "Agent"|"AgentGroup"|"Environment", "id": …} '
    '(an AgentGroup id is "label=value")',
    required=False,
    default="any",
)
_ACTIONS = Param(
    "actions",
    "action_group",
    '"any", "invoke_tool", "read_actions", "write_actions", "delete_actions" or "http"',
    required=False,
    default="any",
)

TEMPLATES: Mapping[str, PolicyTemplate] = {
    t.name: t
    for t in (
        PolicyTemplate(
            "read_only_agent",
            "Forbid every action that is not a read or a read-only tool.",
            (Param("principal", "principal", "the agent or group", required=True),),
            _read_only,
        ),
        PolicyTemplate(
            "tool_allowlist",
            "Permit invoking exactly these tools.",
            (
                Param("principal", "principal", "who may invoke them", required=True),
                Param("tools", "entity_ids", "Tool ids"),
                Param("server", "string", "only tools of this McpServer", required=False),
            ),
            _tool_allowlist,
        ),
        PolicyTemplate(
            "business_hours",
            "Forbid outside business hours (policy time zone).",
            (
                _PRINCIPAL,
                _ACTIONS,
                Param("start_hour", "int", "first hour allowed", required=False, default=8),
                Param("end_hour", "int", "first hour refused again", required=False, default=18),
                Param(
                    "weekdays", "int_list", "ISO weekdays", required=False, default=[1, 2, 3, 4, 5]
                ),
            ),
            _business_hours,
        ),
        PolicyTemplate(
            "amount_limit",
            "Forbid a tool call whose argument is above a maximum, or missing.",
            (
                _PRINCIPAL,
                Param("tool", "string", "Tool id (default: every tool)", required=False),
                Param(
                    "argument", "string", "declared tool argument", required=False, default="amount"
                ),
                Param("maximum", "int", "largest value allowed"),
            ),
            _amount_limit,
        ),
        PolicyTemplate(
            "environment_boundary",
            "Forbid agents acting on resources (or from sources) of another environment.",
            (
                Param(
                    "environment",
                    "string",
                    "only agents of this environment (default: all agents)",
                    required=False,
                ),
            ),
            _environment_boundary,
        ),
        PolicyTemplate(
            "approval_above_risk",
            "Forbid without human approval when the risk score is at or above a threshold.",
            (_PRINCIPAL, _ACTIONS, Param("threshold", "int", "risk score 0-100")),
            _approval_above_risk,
        ),
    )
}


def render_template(name: str, parameters: Mapping[str, Any], schema: Schema) -> str:
    """The Cedar text of template ``name`` with ``parameters``."""
    template = TEMPLATES.get(name)
    if template is None:
        raise InvalidInput(
            f"unknown template {name!r}", hint=f"Templates: {', '.join(sorted(TEMPLATES))}."
        )
    if not isinstance(parameters, Mapping):
        raise InvalidInput("parameters must be an object")
    known = {p.name for p in template.params}
    unknown = set(parameters) - known
    if unknown:
        raise InvalidInput(f"template {name} has no parameters {sorted(unknown)}")
    missing = [p.name for p in template.params if p.required and p.name not in parameters]
    if missing:
        raise InvalidInput(f"template {name} needs parameters {missing}")
    try:
        return template.render(parameters, schema)
    except ValueTypeError as exc:
        raise InvalidInput(str(exc)) from None
