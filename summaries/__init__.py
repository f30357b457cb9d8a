"""AI jobs under purpose limitation: agenda, transcription and summary through the OpenAI provider.

Owns purpose-bound payloads (the only way data reaches a provider), the job rows and queue, the
processing register and the stored outputs. Must not decide consent itself: it asks consent/.
"""
