"""reverb-py: a Pusher Channels protocol server, drop-in for Laravel Reverb."""

__version__ = "0.1.0"
