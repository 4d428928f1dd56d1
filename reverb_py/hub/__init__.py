"""Per-app state on this node: `AppHub` (who is subscribed where, and fan-out) and the parts
that observe it, one module each: presence rules, the cache channels' events, subscription
count throttling, signed-in users and watchlists, webhook decisions.
"""

from reverb_py.hub.app_hub import AppHub

__all__ = ["AppHub"]
