"""A customer-service assistant on llmos's interactive tier: multi-turn conversations whose
history is the prompt prefix, streamed answers, and a load driver that measures time to first
token per turn while a batch flood runs alongside. See README.md here."""
