"""Run the gateway: uvicorn serving gateway.app's FastAPI app."""

from __future__ import annotations

import logging

import uvicorn

from gateway.app import build_app
from gateway.config import GatewayConfig

log = logging.getLogger(__name__)


def run(config: GatewayConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not config.api_keys:
        log.warning("no --api-keys: anyone who reaches http://%s:%d may use it", config.host, config.port)
    uvicorn.run(
        build_app(config), host=config.host, port=config.port, log_level="info", access_log=config.access_log
    )
