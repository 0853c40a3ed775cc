"""The HTTP API: one module per resource, all routes registered in `routing.ROUTES`."""
