"""Split LLMs over the network: the server's side of LLM sessions and the edge's network client.

The model side (halves, caches, hidden-state wire, sampling) is :mod:`splitcomp.llm`; this
package adds what needs the runtime. :class:`LLMDeployment` serves a :class:`ServerHalf` from
:class:`splitcomp.runtime.Server` (``splitcomp serve --llm``) with sessions
(:class:`SessionManager`: unguessable ids bound to the client's token, idle timeout, KV-cache
cap and per-client quotas), codec contexts (:class:`ContextStore`), bounded STEP frames and
continuous batching of decode steps; :class:`RemoteLM` / :class:`AsyncRemoteLM` keep the edge
half and its cache on the client (``splitcomp generate --server``) and rebuild a server
session lost to a restart by replaying what they sent. Frames: ``docs/protocol.md``, "Split
LLM sessions".
"""

from .client import AsyncRemoteLM, RemoteLM, RemoteStep
from .contexts import ContextStore, codec_context
from .remote_lm import SplitCausalLM
from .service import LLMDeployment, StepItem
from .sessions import ServerSession, SessionError, SessionManager

__all__ = [
    "AsyncRemoteLM", "ContextStore", "LLMDeployment", "RemoteLM", "RemoteStep", "ServerSession",
    "SessionError", "SessionManager", "SplitCausalLM", "StepItem", "codec_context",
]
