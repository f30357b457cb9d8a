"""The HTTP face of callgate: the FastAPI app factory, thin routers, auth and problem+json.

Owns translation between HTTP and the domain packages (errors -> RFC 9457, keys -> callers)
and the pages. Must not hold business rules: those live in the domain packages it calls.
"""
