"""Keys, the allowlist and CurveZMQ for every llmos socket (see docs/security.md).

`keyring`: key files and the allowlist; `authenticator`: the ZAP handler;
`curve`: socket options; `service_keys`: what a service opens at start;
`client_keys`: which keys a client uses.
"""
