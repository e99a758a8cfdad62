"""Logging set-up shared by every service's main()."""

import logging
import os


def setup_logging(service: str) -> logging.Logger:
    level = os.environ.get("LLMOS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    return logging.getLogger(service)
