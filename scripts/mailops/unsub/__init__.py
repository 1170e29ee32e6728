"""One-click unsubscribe (RFC 8058, RFC 2369): tokens, the bulk nodes' milter, the endpoint.

docs/unsubscribe.md says how the parts fit; ``mailops unsub`` is the command.
"""
