"""LangChain tools guarded in process (``pip install 'agentiam[langchain]'``).

``guard.langchain_tools([search, transfer])`` returns ``BaseTool`` objects to use
where the originals went: LangChain's ``create_agent``, a LangGraph ``ToolNode``, or
any code calling ``tool.invoke`` / ``ainvoke`` (the tests use the last, with tool calls
shaped as a model emits them). Each call is first
decided and recorded by the guard (:class:`~agentiam.adapters.gateway.guard.Guard`),
the same way a ``@guard.tool`` function is (docs/guard.md):

- **Same tool to the model.** Name, description and argument schema are the
  original's, so the model sees no difference. The tool name is the policy resource:
  ``Tool::"<name>"``, action ``invoke_tool``.
- **Arguments.** The input as LangChain validated it against the tool's schema, as
  JSON values (:func:`~agentiam.adapters.gateway.guard.plain_arguments`; a nested
  pydantic model or dataclass, which LangChain passes as an instance, as its JSON
  form): ``context.args`` for policy, names (and values where the redaction rules
  allow) in the audit trail. A value with no JSON form refuses the call
  (``invalid_request``) rather than hide it from policy. A single-input tool without a
  schema is decided with its input as ``{"input": …}``.
- **Decided before it runs.** The decision's event is durable before the original tool
  runs; its outcome (``tool.call``, success or failure by exception class) after.
- **A refusal** (policy, task scope, rate limit, a missing or revoked token, a pending
  approval, the control plane away past the outage bound) never runs the original.
  With ``on_refusal="message"`` (the default) the tool answers the model with a short
  error text saying why (status, error code, reason, decision or approval id): the
  call's ``ToolMessage`` has ``status="error"``, and the agent can change course or
  tell its human. With ``on_refusal="raise"`` the :class:`ToolCallDenied` propagates
  and ends the agent's run.
- **The original's own errors** are left as the original handles them
  (``handle_tool_error``): one it handles is its answer to the model, with
  ``status="error"``, and the call's outcome is recorded as a failure
  (``tool_error``); a ``ToolException`` it does not handle is raised as before, and
  so is a ``ToolCallDenied`` it raises itself (it ran: that refusal is not ours).

- **Artifacts.** A tool whose ``response_format`` is ``content_and_artifact`` keeps
  it: the model reads the content, and the ``ToolMessage`` carries the original's
  artifact (none on an error or a refusal, as LangChain does for a handled error).
  The audit trail records neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, ToolException
from pydantic import ConfigDict, PrivateAttr

from agentiam.adapters.gateway.guard import ApprovalRefusal, ToolCallDenied

if TYPE_CHECKING:
    from agentiam.adapters.gateway.guard import Guard, GuardedCall, TokenSource

__all__ = ["GuardedTool", "ToolCallRefused", "guard_tools"]

OnRefusal = Literal["message", "raise"]


class ToolCallRefused(ToolException):
    """The guard refused the call; its message is what the model reads. ``denied``
    is the guard's :class:`ToolCallDenied`."""

    def __init__(self, denied: ToolCallDenied) -> None:
        super().__init__(refusal_text(denied))
        self.denied = denied


def refusal_text(denied: ToolCallDenied) -> str:
    """What the model is told: that the call did not run, and why, with the ids a
    human (or the agent, retrying with an approval) needs; never a token."""
    parts = [
        f"AgentIAM refused this call ({denied.refusal_status} {denied.error}): "
        f"{denied.reason}. The tool did not run."
    ]
    if denied.decision_id is not None:
        parts.append(f"Decision: {denied.decision_id}.")
    if isinstance(denied, ApprovalRefusal) and denied.approval_id is not None:
        parts.append(f"Approval request: {denied.approval_id} ({denied.approval_state}).")
    if denied.retry_after is not None:
        parts.append(f"Retry after {denied.retry_after:g} s.")
    return " ".join(parts)


class _Handled(ToolException):
    """The original tool handled an error of its own: its answer (``args[0]``) goes
    to the model as an error, as it would have without the guard."""


_INNER_CALL_ID = "agentiam-guarded"  # the original's run is asked as a tool call


def _handle(error: ToolException) -> Any:
    """The wrapper's ``handle_tool_error``: a refusal, or an error the original
    handled, becomes the model's message; the original's own unhandled
    ToolException is raised again, as before."""
    if isinstance(error, ToolCallRefused | _Handled):
        return error.args[0]
    raise error


class GuardedTool(BaseTool):
    """A LangChain tool whose every call the guard decides first; see the module
    docstring. Build with :func:`guard_tools` (or ``Guard.langchain_tools``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _inner: BaseTool = PrivateAttr()
    _guard: Guard = PrivateAttr()
    _token: TokenSource | None = PrivateAttr(default=None)
    _raise: bool = PrivateAttr(default=False)

    @classmethod
    def wrap(
        cls,
        guard: Guard,
        tool: BaseTool,
        *,
        on_refusal: OnRefusal = "message",
        token: TokenSource | None = None,
    ) -> GuardedTool:
        if not isinstance(tool, BaseTool):
            raise TypeError(f"{tool!r} is not a LangChain tool (BaseTool)")
        if isinstance(tool, GuardedTool):
            raise TypeError(f"the tool {tool.name} is guarded already")
        if tool.response_format not in ("content", "content_and_artifact"):
            raise TypeError(
                f"the tool {tool.name}: response_format {tool.response_format!r} is not supported"
            )
        if on_refusal not in ("message", "raise"):
            raise ValueError('on_refusal must be "message" or "raise"')
        guard.call(tool.name)  # the name is checked now, not at the first call
        wrapped = cls(
            name=tool.name,
            description=tool.description,
            args_schema=tool.args_schema,
            return_direct=tool.return_direct,
            response_format=tool.response_format,
            tags=tool.tags,
            metadata=tool.metadata,
            handle_tool_error=_handle,
            handle_validation_error=tool.handle_validation_error,
        )
        wrapped._inner = tool
        wrapped._guard = guard
        wrapped._token = token
        wrapped._raise = on_refusal == "raise"
        return wrapped

    @property
    def inner(self) -> BaseTool:
        """The original tool."""
        return self._inner

    def _input(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The original's input, as a tool call (so that it answers with its status),
        and the arguments decided on."""
        decided = kwargs
        if args and not kwargs:
            decided = {"input": args[0] if len(args) == 1 else list(args)}
        call = {"type": "tool_call", "name": self._inner.name, "args": decided,
                "id": _INNER_CALL_ID}  # fmt: skip
        return call, decided

    def _answer(self, message: Any, call: GuardedCall) -> tuple[Any, bool]:
        """The original's answer (``(content, artifact)`` for a ``content_and_artifact``
        tool) and whether it was an error it handled (then the call is marked failed)."""
        if not isinstance(message, ToolMessage):  # a Command or another tool output
            if self.response_format == "content_and_artifact":
                return (message, None), False  # LangChain passes it on as it is
            return message, False
        if message.status == "error":
            call.fail("tool_error")
            return message.content, True
        if self.response_format == "content_and_artifact":
            return (message.content, message.artifact), False
        return message.content, False

    def _refused(self, denied: ToolCallDenied) -> ToolException:
        if self._raise:
            raise denied
        return ToolCallRefused(denied)

    def _run(
        self, *args: Any, run_manager: CallbackManagerForToolRun | None = None, **kwargs: Any
    ) -> Any:
        value, decided = self._input(args, kwargs)
        callbacks = run_manager.get_child() if run_manager is not None else None
        entered = False  # a denial raised by the original itself is not ours
        try:
            with self._guard.call(self.name, decided, token=self._token) as call:
                entered = True
                answer, failed = self._answer(
                    self._inner.invoke(value, {"callbacks": callbacks}), call
                )
        except ToolCallDenied as denied:
            if entered:
                raise
            raise self._refused(denied) from None
        if failed:
            raise _Handled(answer)
        return answer

    async def _arun(
        self,
        *args: Any,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> Any:
        value, decided = self._input(args, kwargs)
        callbacks = run_manager.get_child() if run_manager is not None else None
        entered = False  # a denial raised by the original itself is not ours
        try:
            async with self._guard.call(self.name, decided, token=self._token) as call:
                entered = True
                answer, failed = self._answer(
                    await self._inner.ainvoke(value, {"callbacks": callbacks}), call
                )
        except ToolCallDenied as denied:
            if entered:
                raise
            raise self._refused(denied) from None
        if failed:
            raise _Handled(answer)
        return answer


def guard_tools(
    guard: Guard,
    tools: Sequence[BaseTool],
    *,
    on_refusal: OnRefusal = "message",
    token: TokenSource | None = None,
) -> list[BaseTool]:
    """Each of ``tools`` guarded (:class:`GuardedTool`). ``token``: the principal for
    these tools (default: the guard's, or ``guard.acting_as``)."""
    return [GuardedTool.wrap(guard, t, on_refusal=on_refusal, token=token) for t in tools]
