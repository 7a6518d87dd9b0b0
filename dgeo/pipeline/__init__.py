"""Layer 4: assembled jobs (today the ``demo``; the localizer and training recipes come next)."""
