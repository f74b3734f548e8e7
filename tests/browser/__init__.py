"""The operator dashboard (/ui) driven by Chromium through Playwright, against the real stack."""
