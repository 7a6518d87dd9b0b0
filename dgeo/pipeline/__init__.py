"""Layer 4: assembled jobs: the localizer (:mod:`.localizer`, :mod:`.localize`), its run
plumbing (:mod:`.runs`, :mod:`.distributed`), the ``demo`` and the training recipes
(:mod:`.recipes`)."""
