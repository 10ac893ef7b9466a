"""Route handlers, one module per resource; each declares its role in `opt` (app.api.auth)."""
