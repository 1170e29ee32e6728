"""mailops: tools that run on the hosts of a self-hosted Postfix mail cluster."""

__version__ = "0.1.0"
