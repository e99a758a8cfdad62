"""The llmos broker: the front door and message bus (`llmos broker`)."""
