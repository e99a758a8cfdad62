"""llmos: an operating system for serving large language models.

This package holds what every llmos process shares: the wire code
(`llmos.wire`), the client SDK (`llmos.client`, `llmos.aio`) and the `llmos`
command line (`llmos.cli`). It must stay light to import: torch and
transformers are imported only by the worker and the model tools.
"""

__version__ = "0.1.0"
