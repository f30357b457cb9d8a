"""LiveKit mode recording: Track Egress for exactly the consenting people's tracks.

`service` decides (any node, from LiveKit's own lists and the stored egresses), `rooms` asks
LiveKit what a room holds, `records` is the shared list of every egress callgate started,
`withdrawals` stops a withdrawn person's egresses from the committing path, `events` follows
the bus (withdrawals at once, the rest in order), `webhook` checks and deduplicates LiveKit's
calls, `intake` takes finished files in (encrypted) or deletes them, `control` is all it asks
of recording (on/off and the granting ledger entry). Nothing here taps media or decides
consent.
"""

from media.egress.records import EgressRecord, EgressState
from media.egress.service import Egress
from media.egress.webhook import verify_webhook

__all__ = ["Egress", "EgressRecord", "EgressState", "verify_webhook"]
