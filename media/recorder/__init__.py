"""The recording peer: each page's aiortc connection, written to disk without transcoding.

aiortc's `MediaRecorder` decodes every frame and encodes it again. Here the receiver's
*encoded* frames are taken instead (`tap`), each decided on as it arrives (`capture`: the
booking's switch in `media.control`, then the live consent gate in `media.gate`) and written
into one file per person, per kind, per consent span (`spans`); rows and events follow in order
off the frame path (`rows`), naming the ledger entry that granted them (`grants`), and files a
crash left open are salvaged on start (`recovery`). Fail closed: no gate, or a gate that cannot
confirm its state, means nothing is written and the page is told "paused" on the bus
(`recording.changed`) until the gate is back.
"""

from media.gate import ConsentGate, GateSource, gate_confirmed
from media.recorder.capture import CaptureState, PeerSession, TrackCapture
from media.recorder.recorder import Recorder
from media.recorder.spans import Span, SpanSummary
from media.recorder.tap import EncodedTap, install_tap

__all__ = [
    "CaptureState",
    "ConsentGate",
    "EncodedTap",
    "GateSource",
    "PeerSession",
    "Recorder",
    "Span",
    "SpanSummary",
    "TrackCapture",
    "gate_confirmed",
    "install_tap",
]
