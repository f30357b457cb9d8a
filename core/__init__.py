"""Infrastructure and identity shared by every domain of callgate.

Owns settings, the database, the event bus, crypto, the clock, errors, API keys and bookings.
Must not import any other callgate package, nor FastAPI: everything else builds on this.
"""
