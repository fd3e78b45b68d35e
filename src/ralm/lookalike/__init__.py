"""Stage 2: look-alike learning (transforming layer, seed clustering, attention, scorer)."""
