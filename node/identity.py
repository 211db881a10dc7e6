"""The development identity of a node without a token file (loopback only: node.config): the
caller is the agent its ``x-agent-id`` header names, else ``anonymous``, as the development
principal (node.auth.Principal with no tenant). With a token file, node.auth identifies callers.
"""

from __future__ import annotations

import grpc

from node import validation
from node.auth import Principal
from node.validation import Limits

ANONYMOUS = "anonymous"
AGENT_HEADER = "x-agent-id"


# The principals of agent ids seen (a frozen dataclass's __init__ runs interpreted, on every
# call); emptied when full, as a client may send any number of ids.
_PRINCIPALS: dict[str, Principal] = {}
_PRINCIPALS_MAX = 4096


def identify_by_header(context: grpc.ServicerContext, limits: Limits) -> Principal:
    """Development identity: the agent id from ``x-agent-id`` metadata, else ``anonymous``."""
    agent = ANONYMOUS
    for k, v in context.invocation_metadata():
        if k == AGENT_HEADER:
            agent = validation.source(str(v), AGENT_HEADER, limits)
            break
    found = _PRINCIPALS.get(agent)
    if found is None:
        if len(_PRINCIPALS) >= _PRINCIPALS_MAX:
            _PRINCIPALS.clear()
        found = _PRINCIPALS[agent] = Principal(agent)
    return found


__all__ = ["AGENT_HEADER", "ANONYMOUS", "identify_by_header"]
