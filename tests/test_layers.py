"""The layering the architecture promises, checked: the Pusher protocol layer loads nothing of
the I/O stack.
"""

from __future__ import annotations

import subprocess
import sys

IO_STACK = ("asyncio", "httptools", "uvloop")
OTHER_LAYERS = ("reverb_py.transport", "reverb_py.hub", "reverb_py.webhooks")


def test_the_protocol_layer_loads_no_io_transport_hub_or_webhook_sender() -> None:
    probe = (
        "import sys, reverb_py.pusher.session, reverb_py.pusher.http_api\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert "reverb_py.pusher.session" in loaded  # the probe did import something
    forbidden = [
        name
        for name in loaded
        if name.split(".")[0] in IO_STACK
        or any(name == layer or name.startswith(layer + ".") for layer in OTHER_LAYERS)
    ]
    assert forbidden == []
