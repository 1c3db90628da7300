"""Routing: which deployment serves a model id.

Today a model id maps to one deployment; model groups, load balancing and fallbacks plug in here
without the gateway or the providers changing.
"""

from keel.routing.router import Capability, Router, build_providers

__all__ = ["Capability", "Router", "build_providers"]
