"""Recording: the consent-gated recorder (aiortc peer writing RTP payloads without transcoding),
the Ogg/WebM writers, encrypted storage under per-person data keys, recording rows.
Must not decide consent itself (it asks the gate at every frame) nor import FastAPI.
"""
