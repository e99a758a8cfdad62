"""Everything that crosses a socket: the generated protobuf code and the
constants and helpers around it. All wire constants live here, so no other
module spells a message type, an error code or an address default."""

from llmos.wire import llmos_pb2 as pb
from llmos.wire.constants import *  # noqa: F403 - the constants are the module's API
from llmos.wire.envelope import WireError, error_frame, pack, unpack
from llmos.wire.handlers import Handlers

__all__ = ["pb", "Handlers", "WireError", "error_frame", "pack", "unpack"]
