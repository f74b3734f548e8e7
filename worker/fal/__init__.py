"""Everything that speaks fal: gateway, answers, webhooks, the poller; the emulator beside it."""
