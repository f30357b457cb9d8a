"""One router per resource; each only translates HTTP <-> domain calls."""
