"""A DICOM gateway in front of the PACS: every instance that leaves is marked and recorded.

``leaktrace gateway --config gateway.toml`` runs :class:`Gateway`; the configuration is
described in :mod:`forensics.gateway.config`, the services in :mod:`forensics.gateway.node`.
"""

from .config import ConfigError, GatewayConfig, Node, Recipient, load_config, parse_config
from .node import Gateway, echo, send

__all__ = ["Gateway", "GatewayConfig", "Node", "Recipient", "ConfigError", "load_config",
           "parse_config", "echo", "send"]
