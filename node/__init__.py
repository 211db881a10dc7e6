"""One node: servicers, the belief engine and resolution, the RocksDB store, metrics, bootstrap."""

from node.errors import SelfModelError
from node.policy import ContextPolicy, PolicyBook
from node.resolution import Belief, explain_slot, resolve

__all__ = ["Belief", "ContextPolicy", "PolicyBook", "SelfModelError", "explain_slot", "resolve"]
