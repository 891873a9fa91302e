"""The client side: HTTP client, local party state, and verified recordation."""

from .http import PacspaceClient, ServerError

__all__ = ["PacspaceClient", "ServerError"]
