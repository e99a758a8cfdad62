"""The llmos resource kernel (`llmos kernel`): worker registry, KV block ledger,
and the resource view published on PUB."""
