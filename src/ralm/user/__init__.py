"""Stage 1: user representation learning (feature embedding, attention merge, sampled softmax)."""
